"""The kernel atlas of a model: which heads became convolutions, attentions, recurrences.

:func:`atlas` runs one forward of a model on a batch, captures the kernel of every integral-transform layer call
(:mod:`itnet_scale.atlas.capture`), scores every head (:mod:`itnet_scale.atlas.scores`) and returns an
:class:`Atlas`: its per-head scores and classes (``to_json``, ``table``), figures (``summary_figure``,
``query_figure``) and ``write(out_dir)`` for all of them at once::

    from itnet_scale.atlas import atlas
    result = atlas(model, batch)           # any module holding IntegralTransform layers
    print(result.table())
    result.write("atlas/")                 # atlas.json, summary.png, one kernels PNG per layer
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from itnet_scale.atlas.capture import LayerKernel, capture_kernels
from itnet_scale.atlas.figures import grid_shape, query_figure, summary_figure
from itnet_scale.atlas.scores import SCORES, AtlasSettings, HeadScores, head_scores
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.nn.heads import IGNORE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The batch keys that only the masked-modeling objectives read (dropped by :func:`inspection_batch`).
OBJECTIVE_KEYS = ("mlm_labels", "image_mask", "point_mask")


@dataclass
class LayerAtlas:
    """One layer call: its captured kernel and its heads' scores."""

    kernel: LayerKernel
    scores: list[HeadScores]


@dataclass
class Atlas:
    """Every captured layer call of one forward, in call order, with the settings the scores used."""

    layers: list[LayerAtlas]
    settings: AtlasSettings = field(default_factory=AtlasSettings)

    @classmethod
    def from_kernels(cls, kernels: Sequence[LayerKernel], settings: AtlasSettings | None = None) -> Atlas:
        """Score captured kernels (e.g. those of :func:`~itnet_scale.atlas.capture.capture_kernels`)."""
        settings = settings or AtlasSettings()
        return cls([LayerAtlas(k, head_scores(k, settings)) for k in kernels], settings)

    @property
    def labels(self) -> list[str]:
        return [layer.kernel.label for layer in self.layers]

    def kinds(self) -> list[list[str]]:
        """``[layer][head]`` nearest special case."""
        return [[s.kind for s in layer.scores] for layer in self.layers]

    def to_json(self) -> dict[str, Any]:
        """``{"settings": …, "layers": [{"name", "call", "heads": [{locality, …, kind}, …]}, …]}`` (NaN → null)."""
        return {"settings": asdict(self.settings),
                "layers": [{"name": layer.kernel.name, "call": layer.kernel.call,
                            "heads": [s.as_dict() for s in layer.scores]} for layer in self.layers]}

    def scalars(self, prefix: str = "atlas") -> dict[str, float]:
        """``{prefix}/{layer}/head{h}/{score}`` → value, the finite scores only (for TensorBoard)."""
        out = {}
        for layer in self.layers:
            for h, s in enumerate(layer.scores):
                for name in SCORES:
                    value = getattr(s, name)
                    if math.isfinite(value):
                        out[f"{prefix}/{layer.kernel.label}/head{h}/{name}"] = value
        return out

    def table(self) -> str:
        """A Markdown table: one row per (layer, head)."""
        lines = ["| layer | head | " + " | ".join(SCORES) + " | nearest special case |",
                 "|---|---:|" + "---:|" * len(SCORES) + "---|"]
        for layer in self.layers:
            for h, s in enumerate(layer.scores):
                values = " | ".join("–" if math.isnan(getattr(s, n)) else f"{getattr(s, n):.3f}" for n in SCORES)
                lines.append(f"| {layer.kernel.label} | {h} | {values} | {s.kind} |")
        return "\n".join(lines)

    def summary_figure(self, title: str = "") -> Figure:
        """Layers × heads grid of the scores and classes (:func:`~itnet_scale.atlas.figures.summary_figure`)."""
        return summary_figure(self.labels, [layer.scores for layer in self.layers], title)

    def query_figure(self, layer: int, queries: Sequence[int] | None = None, sample: int = 0) -> Figure:
        """``K_h(i,·)`` of the ``layer``-th captured call for ``queries`` (default :func:`default_queries`)."""
        kernel = self.layers[layer].kernel
        return query_figure(kernel, list(queries) if queries else default_queries(kernel, sample), sample)

    def write(self, out_dir: str | Path, *, queries: Sequence[int] | None = None, title: str = "",
              prefix: str = "") -> list[Path]:
        """Write ``{prefix}atlas.json``, ``{prefix}summary.png`` and ``{prefix}kernels_{k}.png`` (the ``k``-th
        captured call) into ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{prefix}atlas.json", out / f"{prefix}summary.png"]
        paths[0].write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        self.summary_figure(title).savefig(paths[1], dpi=110)
        for k in range(len(self.layers)):
            paths.append(out / f"{prefix}kernels_{k}.png")
            self.query_figure(k, queries).savefig(paths[-1], dpi=90)
        return paths


def default_queries(layer: LayerKernel, sample: int = 0) -> list[int]:
    """Three query tokens of ``sample``: on an image grid the points at a quarter, half and three quarters of
    both axes; otherwise the real tokens at a quarter, half and three quarters of the sequence."""
    grid = grid_shape(layer.pos_s[sample]) if layer.kernel.shape[2] == layer.kernel.shape[3] else None
    if grid is not None:
        _, _, rows, cols = grid
        return [(rows * f // 4) * cols + cols * f // 4 for f in (1, 2, 3)]
    real = torch.nonzero(layer.query_valid[sample]).flatten().tolist() or [0]
    return sorted({real[len(real) * f // 4] for f in (1, 2, 3)})


def inspection_batch(batch: Mapping[str, Tensor], samples: int | None = None) -> dict[str, Tensor]:
    """A pretraining batch as plain model input: the masked text restored (``mlm_labels`` put back), the masked
    modeling keys (:data:`OBJECTIVE_KEYS`) dropped, and only the first ``samples`` rows (None: all)."""
    plain = {key: value for key, value in batch.items() if key not in OBJECTIVE_KEYS}
    if "mlm_labels" in batch and "text_ids" in batch:
        labels = batch["mlm_labels"]
        plain["text_ids"] = torch.where(labels != IGNORE, labels, batch["text_ids"])
    return {key: value[:samples] for key, value in plain.items()} if samples is not None else plain


def run_model(model: nn.Module, batch: Any) -> object:
    """The default forward of :func:`atlas`: a pretraining model's evaluation forward (``model(batch,
    evaluate=True)``: every head it needs, as a forward of the whole model), else ``model(batch)``."""
    if isinstance(model, ITNetForPretraining):
        return model(batch, evaluate=True)
    return model(batch)


def atlas(model: nn.Module, batch: Any, *, forward: Callable[[nn.Module, Any], object] | None = None,
          settings: AtlasSettings | None = None) -> Atlas:
    """The kernel atlas of ``model`` on ``batch``: one forward in eval mode without gradients (the mode is
    restored), every integral-transform call captured and scored.

    Args:
        model: any module holding :class:`~itnet_scale.nn.IntegralTransform` layers (a task model, a pretraining
            model — under DeepSpeed its ``engine.module`` — or a special-case module such as ``ITNetConv``).
        batch: the model's input; a pretraining batch may go through :func:`inspection_batch` first.
        forward: ``forward(model, batch)`` runs the model (default :func:`run_model`); under DeepSpeed ZeRO-3 every
            rank must run it.
        settings: the scores' radius and the decision rule's thresholds.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_kernels(model) as kernels:
            (forward or run_model)(model, batch)
    finally:
        model.train(was_training)
    if not kernels:
        raise ValueError(f"the forward of {type(model).__name__} ran none of its IntegralTransform layers")
    return Atlas.from_kernels(kernels, settings)
