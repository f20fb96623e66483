"""Model configs: one :class:`ModelConfig` describes the backbone, the encoders and the pretraining heads.

Every size in ``configs/model/*.yaml`` is a ModelConfig; task models (classification, VQA, NLVR2) are built from
the same config plus their label count, so one pretrained backbone loads into each. Each layer's integral
transform is ``layer`` (the default) merged with the ``layers`` overrides whose key names it: ``"3"`` (layer 3)
or ``"0-5"`` (layers 0 to 5, inclusive), applied in key order. A key an :class:`LayerConfig` does not know is an
error naming the override and the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from itnet_scale.config import merge_config

#: The backbone's shared position space: (row, column, sequence) — see :mod:`itnet_scale.nn.encoders`.
POS_DIM = 3
_LAYER_KEY = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass
class LayerConfig:
    """Keyword arguments of one layer's :class:`~itnet_scale.nn.IntegralTransform` (same names)."""

    kernel_width: int = 16
    kernel_depth: int = 1
    kernel_activation: str = "relu"
    mode: str = "softmax"
    support: str = "all"
    support_size: float = math.inf
    bilinear: bool = True
    offset_range: int | None = None
    decay: bool = False
    integrator: str = "exact"
    rank: int | None = None
    feature_map: str = "learned"
    chunk_size: int = 64
    samples: int = 256
    proposal: str = "uniform"
    proposal_window: int = 32
    sample_block: int = 64
    backend: str = "auto"


@dataclass
class ModelConfig:
    """The ITNet backbone (``dim``, ``depth``, ``heads``, ``mlp_ratio``…), its encoders and pretraining heads.

    Text: ``vocab_size`` ids (``pad_id`` pads). Images: ``image_channels`` × H × W, patches of ``patch_size``.
    Point clouds: ``point_groups`` farthest-point centers, each a group of its ``point_group_size`` nearest
    points. ``contrastive_dim``: the image–text embedding size.
    """

    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    norm_eps: float = 1e-6
    vocab_size: int = 3000
    pad_id: int = 0
    image_channels: int = 1
    patch_size: int = 4
    point_groups: int = 64
    point_group_size: int = 16
    contrastive_dim: int = 128
    layer: LayerConfig = field(default_factory=LayerConfig)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.layer, dict):
            self.layer = LayerConfig(**self.layer)
        for name in ("dim", "depth", "heads", "vocab_size", "image_channels", "patch_size", "point_groups",
                     "point_group_size", "contrastive_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be a token id below vocab_size={self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0 or self.mlp_ratio <= 0:
            raise ValueError(f"dropout must be in [0, 1) and mlp_ratio > 0, got {self.dropout}, {self.mlp_ratio}")
        for key in self.layers:
            self.layer_range(key)
        for index in range(self.depth):  # every override is a valid LayerConfig: fail now, naming it
            self.layer_settings(index)

    def layer_range(self, key: str) -> range:
        """The layer indices an override key names (``"3"``, ``"0-5"``); bad keys raise naming them."""
        match = _LAYER_KEY.match(str(key))
        if match is None:
            raise ValueError(f"layers: key {key!r} must be a layer index or an inclusive range like '0-5'")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if first > last or last >= self.depth:
            raise ValueError(f"layers: key {key!r} names layers outside 0..{self.depth - 1} (depth={self.depth})")
        return range(first, last + 1)

    def layer_settings(self, index: int) -> dict[str, Any]:
        """The IntegralTransform keyword arguments of layer ``index``: ``layer`` merged with its overrides."""
        overrides = [dict(value) for key, value in sorted(self.layers.items()) if index in self.layer_range(key)]
        where = f"layers[{index}]"
        settings = merge_config(LayerConfig, [asdict(self.layer), *overrides], what=f"{where} config", where=where)
        return asdict(settings)
