"""Model configs: one :class:`ModelConfig` describes the encoders, the backbone and the pretraining heads.

Every size in ``itnet_scale/models/configs/*.yaml`` is a ModelConfig (an omegaconf structured dataclass: unknown keys
and wrong types are errors naming the key). Task models (classification, VQA, NLVR2) are built from the same config
plus their label count, so one pretrained backbone loads into each. Each layer's integral transform is
``layer`` (the defaults, a :class:`LayerConfig`) merged with the ``layers`` overrides whose key names it —
``"3"`` (layer 3) or ``"0-5"`` (layers 0 to 5, inclusive) — applied in the order listed
(:meth:`ModelConfig.layer_configs`). An override's keys and values are checked against :class:`LayerConfig`; a
bad one is an error naming the override and the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from itnet_scale.config import merge_config
from itnet_scale.nn import KernelConfig, TransformConfig
from itnet_scale.nn.encoders import ENCODER_MODALITIES, check_image_stem, check_modalities
from itnet_scale.nn.heads import check_pooling
from itnet_scale.ops import make_integrator, with_settings

_LAYER_KEY = re.compile(r"^(\d+)(?:-(\d+))?$")


def layer_range(key: str | int, depth: int) -> range:
    """The layer indices an override key names (``3``, ``"3"``, ``"0-5"``); a bad key raises naming it."""
    match = _LAYER_KEY.match(str(key).strip())
    if match is None:
        raise ValueError(f"layers: key {key!r} must be a layer index or an inclusive range like '0-5'")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if first > last or last >= depth:
        raise ValueError(f"layers: key {key!r} names layers outside 0..{depth - 1} (depth={depth})")
    return range(first, last + 1)


@dataclass
class LayerConfig:
    """A layer's integral transform in flat YAML keys: the kernel (``kernel_width``, ``kernel_depth``,
    ``kernel_activation``, ``mode``, ``support``, ``support_size``, ``bilinear``, ``offset_range``, ``decay``,
    ``locality`` (the strength of the locality prior at initialization), the feature maps' ``rank`` and
    ``feature_map``: :class:`~itnet_scale.nn.KernelConfig`), the per-head sizes and
    biases, and the ``integrator`` (``exact`` / ``lowrank`` / ``montecarlo``) with its settings and ``backend``
    (:mod:`itnet_scale.ops.settings`; a setting the chosen integrator does not have is ignored).
    :meth:`transform` turns it into the block's :class:`~itnet_scale.nn.TransformConfig`; the defaults are those
    of the typed settings."""

    kernel_width: int = 16
    kernel_depth: int = 1
    kernel_activation: str = "relu"
    mode: str = "softmax"
    support: str = "all"
    support_size: float = math.inf
    bilinear: bool = True
    offset_range: int | None = None
    decay: bool = False
    locality: float = 0.0
    head_dim: int | None = None
    value_dim: int | None = None
    bias: bool = True
    integrator: str = "exact"
    rank: int | None = None
    feature_map: str = "learned"
    chunk_size: int = 64
    samples: int = 256
    proposal: str = "uniform"
    proposal_window: int = 32
    sample_block: int = 64
    backend: str = "auto"

    def transform(self) -> TransformConfig:
        """The typed settings of this layer."""
        kernel = KernelConfig(
            mode=self.mode, support=self.support, support_size=self.support_size, width=self.kernel_width,
            depth=self.kernel_depth, activation=self.kernel_activation, bilinear=self.bilinear,
            offset_range=self.offset_range, decay=self.decay, locality=self.locality, rank=self.rank,
            feature_map=self.feature_map)
        default = make_integrator(self.integrator)  # an unknown name raises here, naming the choices
        mine = {f.name for f in dataclasses.fields(self)}
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(default) if f.name in mine}
        return TransformConfig(kernel, with_settings(default, **settings), head_dim=self.head_dim,
                               value_dim=self.value_dim, bias=self.bias)


#: How the NLVR2 model reads an image pair (``ModelConfig.image_pair_form``).
IMAGE_PAIR_FORMS = ("single", "paired")


@dataclass
class ModelConfig:
    """The ITNet model.

    ``modalities``: the encoders the model builds, of ``image``, ``text``, ``points`` (default all three); a task
    model fine-tuned on one modality builds only that one (and a pretraining model only the heads its encoders
    serve), and a batch of a modality it lacks raises naming it. A pretrained folder with more encoders loads into
    it: the unused encoders' weights are skipped, logged (:mod:`itnet_scale.checkpoint.library`).
    Backbone: ``dim``, ``depth``, ``heads``, ``mlp_ratio``, ``dropout``, ``drop_path`` (stochastic depth of the
    last block, linear in depth), ``norm_eps``; ``layer`` and ``layers`` (see the module doc).
    Text: ``vocab_size`` ids, ``pad_id`` pads; ``tie_mlm_decoder`` ties the MLM decoder to the text embedding;
    ``text_segments``: the segments of a text the model tells apart by a learned segment embedding
    (``text_segment_ids``; 2 for sentence pairs, 1 = none; :mod:`itnet_scale.nn.encoders`).
    Images: ``image_channels`` × H × W, patches of ``patch_size`` (H and W multiples of it), tokenized by
    ``image_stem`` (``patchify`` or ``conv``; :class:`~itnet_scale.nn.encoders.ImageEncoder`).
    Point clouds: ``point_tokens`` farthest-point centers (None: every point is a token), each a group of its
    ``point_group_size`` nearest points read by a per-point MLP of width ``point_hidden``; positions are the
    unit-ball cloud × ``point_position_scale``.
    ``contrastive_dim``: the size of the image–text contrastive embeddings. ``pooling``: how a task model pools the
    tokens into one feature (``mean`` or ``attention``; :class:`~itnet_scale.nn.Pooling`). ``image_pair_form``:
    how the NLVR2 model reads an image pair and its statement — ``single``, one sequence (image, image 2, text), or
    ``paired``, each image with the text, pooled, the two features concatenated (ViLT's and BEiT-3's NLVR2 head).
    """

    modalities: list[str] = field(default_factory=lambda: list(ENCODER_MODALITIES))
    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    vocab_size: int = 3000
    pad_id: int = 0
    tie_mlm_decoder: bool = True
    text_segments: int = 1
    image_channels: int = 3
    patch_size: int = 16
    image_stem: str = "patchify"
    point_tokens: int | None = 64
    point_group_size: int = 32
    point_hidden: int = 128
    point_position_scale: float = 8.0
    contrastive_dim: int = 256
    pooling: str = "mean"
    image_pair_form: str = "single"
    layer: LayerConfig = field(default_factory=LayerConfig)
    layers: dict[Any, dict[str, Any]] = field(default_factory=dict)  # keys: 3 or "3" or "0-5"

    def __post_init__(self) -> None:
        if isinstance(self.layer, dict):
            self.layer = merge_config(LayerConfig, [self.layer], what="layer config", where="layer")
        check_modalities(self.modalities)
        for name in ("dim", "depth", "heads", "vocab_size", "text_segments", "image_channels", "patch_size",
                     "point_group_size", "point_hidden", "contrastive_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.point_tokens is not None and self.point_tokens < 1:
            raise ValueError(f"point_tokens must be >= 1 or null (every point a token), got {self.point_tokens}")
        check_image_stem(self.image_stem, self.patch_size)
        check_pooling(self.pooling)
        if self.image_pair_form not in IMAGE_PAIR_FORMS:
            raise ValueError(f"image_pair_form must be one of {IMAGE_PAIR_FORMS}, got {self.image_pair_form!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be a token id below vocab_size={self.vocab_size}")
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("mlp_ratio", "norm_eps", "point_position_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self.transforms()  # fail now, naming the layer

    def layer_overrides(self) -> dict[str, dict[str, Any]]:
        """``layers`` with each override's values checked and converted by :class:`LayerConfig`'s types."""
        checked = {}
        for key, override in self.layers.items():
            if not isinstance(override, dict):
                raise ValueError(f"layers[{key!r}]: expected a mapping of layer settings, got {override!r}")
            typed = merge_config(LayerConfig, [override], what="layer config", where=f"layers[{key!r}]")
            checked[str(key)] = {name: getattr(typed, name) for name in override}
        return checked

    def layer_configs(self) -> list[LayerConfig]:
        """Each layer's :class:`LayerConfig`: ``layer`` merged with the ``layers`` overrides that name it, in the
        order listed (a later one wins where two set the same key)."""
        merged = [asdict(self.layer) for _ in range(self.depth)]
        for key, override in self.layer_overrides().items():
            for index in layer_range(key, self.depth):
                merged[index].update(override)
        return [LayerConfig(**values) for values in merged]

    def transforms(self) -> list[TransformConfig]:
        """Each block's :class:`~itnet_scale.nn.TransformConfig`; a value or combination no layer can run raises
        naming the layer."""
        transforms = []
        for index, layer in enumerate(self.layer_configs()):
            try:
                transforms.append(layer.transform())
            except ValueError as error:
                raise ValueError(f"layer {index}: {error}") from None
        return transforms

