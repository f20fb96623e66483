"""Figures of captured kernels (matplotlib, an optional dependency: ``pip install itnet_scale[atlas]``).

- :func:`query_figure`: ``K_h(i,·)`` of chosen queries ``i``, one panel per (head, query). Sources on a full 2-D
  grid of integer positions (an image's patches) are drawn as the grid, the query marked; anything else (text,
  point clouds, mixed sequences) as a heat strip in token order, the query marked.
- :func:`summary_figure`: one model's layers × heads grid of each score and of the nearest special case.

Figures are built with matplotlib's object API (no pyplot, no global backend), so they can be saved or handed
to TensorBoard (``SummaryWriter.add_figure``) from any process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from itnet_scale.atlas.capture import LayerKernel
from itnet_scale.atlas.scores import CLASSES, HeadScores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Scores drawn in the summary, with their colour range (None: from the data).
SUMMARY_SCORES = (("locality", (0.0, 1.0)), ("distance", None), ("translation", (0.0, 1.0)),
                  ("content", (0.0, 1.0)), ("causality", (0.0, 1.0)))


def require_matplotlib() -> type[Figure]:
    """matplotlib's ``Figure`` class, imported on first use (an optional dependency); a clear ``ImportError``
    naming the extra to install when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the kernel atlas's figures need matplotlib: pip install 'itnet_scale[atlas]' "
                          "(or matplotlib>=3.8)") from None
    return Figure


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` (no pyplot state)."""
    return require_matplotlib()(**kwargs)


def grid_shape(pos: Tensor) -> tuple[int, int, int, int] | None:
    """``(axis_row, axis_col, rows, cols)`` when the positions ``[N, P]`` are every point of a rows × cols grid of
    integers over exactly two varying axes, in row-major order; else None."""
    varying = [k for k in range(pos.shape[1]) if bool((pos[:, k] != pos[0, k]).any())]
    if len(varying) != 2 or not bool((pos == pos.round()).all()):
        return None
    a, b = varying
    rows = int(pos[:, a].max() - pos[:, a].min()) + 1
    cols = int(pos[:, b].max() - pos[:, b].min()) + 1
    if rows * cols != pos.shape[0]:
        return None
    row = (pos[:, a] - pos[:, a].min()).long()
    col = (pos[:, b] - pos[:, b].min()).long()
    if not bool((row * cols + col == torch.arange(pos.shape[0])).all()):
        return None
    return a, b, rows, cols


def query_figure(layer: LayerKernel, queries: Sequence[int], sample: int = 0) -> Figure:
    """``K_h(i,·)`` of ``sample`` for each query index ``i`` (rows: heads, columns: queries)."""
    H, Nq, Ns = layer.kernel.shape[1:]
    bad = [q for q in queries if not 0 <= q < Nq]
    if bad or not queries:
        raise ValueError(f"queries must be token indices in 0..{Nq - 1}, got {list(queries)}")
    grid = grid_shape(layer.pos_s[sample])
    cols = len(queries)
    size = (2.4 * cols + 0.6, 2.2 * H) if grid else (4.0 * cols + 0.6, 0.9 * H + 0.6)
    figure = new_figure(figsize=size, layout="constrained")
    axes = np.atleast_2d(np.asarray(figure.subplots(H, cols, squeeze=False)))
    kernel = layer.kernel[sample].numpy()
    valid = layer.source_valid[sample].numpy()
    for h in range(H):
        for c, q in enumerate(queries):
            ax, row = axes[h, c], np.where(valid, kernel[h, q], np.nan)
            if grid:
                _, _, rows, width = grid
                image = ax.imshow(row.reshape(rows, width), cmap="magma", interpolation="nearest")
                query = layer.pos_q[sample, q]
                origin = layer.pos_s[sample].min(0).values
                ax.plot(float(query[grid[1]] - origin[grid[1]]), float(query[grid[0]] - origin[grid[0]]), "c+",
                        markersize=10, markeredgewidth=2)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                image = ax.imshow(row[None, :], cmap="magma", aspect="auto", interpolation="nearest")
                if Nq == Ns:
                    ax.axvline(q, color="c", linewidth=1)
                ax.set_yticks([])
                if h < H - 1:
                    ax.set_xticks([])
            figure.colorbar(image, ax=ax, shrink=0.8)
            if h == 0:
                ax.set_title(f"query {q}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"head {h}", fontsize=9)
    figure.suptitle(f"{layer.label}: K(i, ·), sample {sample}", fontsize=10)
    return figure


def summary_figure(labels: Sequence[str], scores: Sequence[Sequence[HeadScores]], title: str = "") -> Figure:
    """Layers × heads heatmaps of each score, and the grid of nearest special cases (``scores[layer][head]``)."""
    heads = max(len(s) for s in scores)
    panels = len(SUMMARY_SCORES) + 1
    figure = new_figure(figsize=(2.1 * panels + 2.5, 0.45 * len(labels) + 1.8), layout="constrained")
    axes = figure.subplots(1, panels, sharey=True)
    for ax, (name, limits) in zip(axes, SUMMARY_SCORES):
        values = np.full((len(labels), heads), np.nan)
        for i, row in enumerate(scores):
            values[i, : len(row)] = [getattr(s, name) for s in row]
        vmin, vmax = limits or (0.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
        ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for (i, h), value in np.ndenumerate(values):
            text = "–" if math.isnan(value) else f"{value:.2f}"
            ax.text(h, i, text, ha="center", va="center", fontsize=7, color="w" if value < (vmin + vmax) / 2 else "k")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(heads))
        ax.set_xlabel("head", fontsize=8)
    kinds = np.full((len(labels), heads), np.nan)
    for i, row in enumerate(scores):
        kinds[i, : len(row)] = [CLASSES.index(s.kind) for s in row]
    ax = axes[-1]
    ax.imshow(kinds, cmap="Set2", vmin=0, vmax=7, aspect="auto")
    for (i, h), value in np.ndenumerate(kinds):
        if not math.isnan(value):
            ax.text(h, i, CLASSES[int(value)].replace("-like", "").replace("/global", "/\nglobal"), ha="center",
                    va="center", fontsize=7)
    ax.set_title("nearest special case", fontsize=9)
    ax.set_xticks(range(heads))
    ax.set_xlabel("head", fontsize=8)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
