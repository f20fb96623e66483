"""Verification that a library folder holds its source's model: the same outputs, to a tolerance, in fp32.

:func:`verify_conversion` runs :func:`verification_batches` (text, image, image + text, image pair + text, point
clouds; fixed by a seed) through the model rebuilt from the source (a DeepSpeed checkpoint or a library folder, as
a :class:`~itnet_scale.checkpoint.sources.WeightSource`) and the one read from the library folder, and raises
:class:`VerificationError` unless every output (and every weight) agrees to ``tolerance``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from itnet_scale.checkpoint.library import LibraryFolder, model_config_of, task_of
from itnet_scale.checkpoint.sources import WeightSource, load_source_model, open_source
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import TASKS
from itnet_scale.nn.encoders import ENCODERS_OF_MODALITY


class VerificationError(Exception):
    """The converted model's outputs differ from the source's by more than the tolerance."""

    def __init__(self, message: str, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


@dataclass
class VerificationResult:
    """The largest absolute difference over every output, per output (``"text/mlm_logits"`` …), and over the
    weights themselves (both models' ``state_dict``, fp32)."""

    max_abs_diff: float
    per_output: dict[str, float]
    tolerance: float
    weights_max_abs_diff: float = 0.0

    def summary(self) -> str:
        worst = max(self.per_output, key=self.per_output.get)
        where = f" (worst: {worst})" if self.max_abs_diff > 0 else ""
        return (f"max abs diff {self.max_abs_diff:.3g} over {len(self.per_output)} outputs{where}, "
                f"{self.weights_max_abs_diff:.3g} over the weights; tolerance {self.tolerance:g}, fp32")


def verification_batches(config: ModelConfig, batch_size: int = 2, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """A fixed batch of every modality for ``config`` (the same for the same seed): ``text`` (``text_ids``
    ``[B, 12]``, the second row padded after 8 tokens, with ``text_attention_mask``), ``image`` (``images``
    ``[B, C, 4p, 4p]``: 16 patches), ``image_text``, ``image_pair_text`` and ``points`` (``[B, P, 3]``, P twice
    what the point encoder needs). A config with ``text_segments > 1`` gets ``text_segment_ids`` too: each text a
    pair, the second segment from token 5 on."""
    generator = torch.Generator().manual_seed(seed)
    length = 12
    low = 1 if config.pad_id == 0 else 0
    ids = torch.randint(low, config.vocab_size, (batch_size, length), generator=generator)
    ids[ids == config.pad_id] = (config.pad_id + 1) % config.vocab_size
    real = torch.ones(batch_size, length, dtype=torch.bool)
    if batch_size > 1:
        real[1, 8:] = False
    ids = torch.where(real, ids, config.pad_id)
    side = 4 * config.patch_size
    images = torch.randn(batch_size, config.image_channels, side, side, generator=generator)
    images2 = torch.randn(batch_size, config.image_channels, side, side, generator=generator)
    count = 2 * max(config.point_tokens or 1, config.point_group_size)
    points = torch.randn(batch_size, count, 3, generator=generator)
    text = {"text_ids": ids, "text_attention_mask": real}
    if config.text_segments > 1:
        segments = torch.zeros_like(ids)
        segments[:, 5:] = 1
        text["text_segment_ids"] = torch.where(real, segments, 0)
    return {"text": text, "image": {"images": images}, "image_text": {"images": images, **text},
            "image_pair_text": {"images": images, "images2": images2, **text}, "points": {"points": points}}


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Every output of ``model`` (eval mode) on the :func:`verification_batches` its encoders take (its config's
    ``modalities``): the backbone's hidden states per modality and the heads' outputs — MLM logits, contrastive
    embeddings, masked patch and point predictions of a pretraining model (the heads it has); the logits (values,
    for regression) of a task model on each modality it takes."""
    task = task_of(model)
    modalities = model_config_of(model).modalities
    batches = {kind: batch for kind, batch in batches.items()
               if all(name in modalities for name in ENCODERS_OF_MODALITY[kind])}
    was_training = model.training
    model.eval()
    outputs: dict[str, Tensor] = {}
    try:
        if task in ("backbone", "pretraining"):
            backbone = model if task == "backbone" else model.itnet
            hidden = {kind: backbone(batch) for kind, batch in batches.items()}
            outputs.update({f"{kind}/hidden": out.hidden for kind, out in hidden.items()})
            if task == "pretraining":
                heads = (("text/mlm_logits", model.mlm, "text", "text"),
                         ("image_text/mlm_logits", model.mlm, "image_text", "text"),
                         ("image/mpm", model.mpm, "image", "image"), ("points/mpp", model.mpp, "points", "points"))
                for name, head, kind, segment in heads:
                    if head is not None and kind in hidden:
                        outputs[name] = head(hidden[kind].part(segment)[0])
                if model.itc is not None:
                    image, text = model.contrastive_embeddings(batches["image_text"])
                    outputs["image_text/itc_image"], outputs["image_text/itc_text"] = image, text
        else:
            kinds = {"classification": ("text", "image", "image_text", "points"),
                     "regression": ("text", "image", "image_text", "points"), "vqa": ("image_text",),
                     "nlvr2": ("image_pair_text",)}[task]
            outputs.update({f"{kind}/logits": model(batches[kind]) for kind in kinds if kind in batches})
    finally:
        model.train(was_training)
    return outputs


@contextlib.contextmanager
def _eager_kernels() -> Iterator[None]:
    """The tiled kernels run eagerly (``ITNET_COMPILE=0``): compiling for a few tiny batches costs more than it
    saves, and both models run the same code either way."""
    before = os.environ.get("ITNET_COMPILE")
    os.environ["ITNET_COMPILE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ITNET_COMPILE", None)
        else:
            os.environ["ITNET_COMPILE"] = before


def compare_outputs(reference: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> dict[str, float]:
    """``{name: max |a − b|}`` in fp32 (``inf`` where shapes differ or a value is not finite)."""
    if set(reference) != set(other):
        raise ValueError(f"outputs differ in names: {sorted(set(reference) ^ set(other))}")
    diffs = {}
    for name, want in reference.items():
        got = other[name]
        if want.shape != got.shape:
            diffs[name] = math.inf
            continue
        diff = (want.float() - got.float()).abs()
        finite = bool(torch.isfinite(want).all() and torch.isfinite(got).all())
        diffs[name] = float(diff.max()) if finite and diff.numel() else (0.0 if finite else math.inf)
    return diffs


def verify_conversion(source: WeightSource | str | Path, library: str | Path, *, tolerance: float = 1e-5,
                      seed: int = 0) -> VerificationResult:
    """Run :func:`verification_batches` through the model rebuilt from ``source`` (its weights rounded to the
    library's dtype, so a bf16 output is held to the same standard) and the one read from the library folder,
    both in fp32; raise :class:`VerificationError` (with the max abs diff) unless every output — and every weight
    — agrees to ``tolerance``. Memory: two fp32 models."""
    source = source if isinstance(source, WeightSource) else open_source(source)
    folder = LibraryFolder(library)
    config = folder.config
    if source.model_config is None:
        raise ValueError(f"{source.path}: no model config to rebuild the source model from")
    stored = config.torch_dtype
    model_class = TASKS[config.task].model_class
    with _eager_kernels():
        reference_model = load_source_model(source, stored)
        if config.task == "backbone" and source.task != "backbone":
            reference_model = reference_model.itnet
        converted = model_class.from_pretrained(library)  # the folder's own task and label count
        batches = verification_batches(config.model, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = model_outputs(reference_model, batches)
            torch.manual_seed(seed)
            got = model_outputs(converted, batches)
    diffs = compare_outputs(want, got)
    weights = compare_outputs(reference_model.state_dict(), converted.state_dict())
    result = VerificationResult(max(diffs.values()), diffs, tolerance, max(weights.values(), default=0.0))
    if not (result.max_abs_diff <= tolerance and result.weights_max_abs_diff <= tolerance):
        bad = [f"{name} {value:.3g}" for name, value in sorted({**diffs, **weights}.items()) if not value <= tolerance]
        raise VerificationError(f"verification FAILED: {library} vs {source.path}: {result.summary()}; over the "
                                f"tolerance: {', '.join(bad[:8])}{' …' if len(bad) > 8 else ''}",
                                max(result.max_abs_diff, result.weights_max_abs_diff))
    return result
