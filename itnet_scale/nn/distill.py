"""Fit a layer's low-rank feature maps ``φ, ψ`` to its exact kernel (DESIGN §1, "lowrank").

Only the feature maps train; the exact kernel's parameters stay frozen (their flags restored),
so after fitting the same layer runs either integrator. Training data: each step draws
``x ~ N(0, 1)`` ``[batch, seq, dim]`` at the default positions ``0 … seq−1``.

The loss compares kernels, both materialized at the fitting length:

- softmax mode: ``KL(K_i ‖ K̃_i)`` per query row (mean over rows), the exact rows ``K``
  (:meth:`~IntegralTransform.kernel_matrix`) against the low-rank integrator's normalized rows
  ``K̃`` (:meth:`~IntegralTransform.lowrank_kernel_matrix`);
- linear mode: ``‖K̃ − K‖² / ‖K‖²`` over the whole batch. Per-row relative errors are dominated
  by the rows of smallest norm and made the fit diverge; the global form weights each row by
  its share of the output.

Kernels rather than outputs: an output loss averages over random value vectors and reaches each
pair only through ``v``; the row KL sees every pair and ignores the per-query scale of ``φ``
(which cancels in the layer too). Steps whose loss or gradient is not finite (fp32 overflow of
extreme features) are skipped and counted. Quality is the held-out relative output error
``‖y_lowrank − y_exact‖ / ‖y_exact‖``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.ops import Exact, LowRank, with_settings


def relative_output_error(layer: IntegralTransform, x: torch.Tensor, backend: str | None = None) -> float:
    """``‖y_lowrank − y_exact‖ / ‖y_exact‖`` of ``layer`` on ``x`` (on ``backend``, default the layer's);
    the layer's integrator is restored."""
    saved = layer.integrator
    backend = backend or saved.backend
    lowrank = saved if isinstance(saved, LowRank) else LowRank()
    try:
        with torch.no_grad():
            layer.integrator = Exact(backend=backend)
            exact = layer(x)
            layer.integrator = with_settings(lowrank, backend=backend)
            approx = layer(x)
    finally:
        layer.integrator = saved
    return ((approx - exact).norm() / exact.norm()).item()


def kernel_loss(layer: IntegralTransform, x: torch.Tensor) -> torch.Tensor:
    """The fitting loss of the current feature maps on ``x`` (see the module docstring)."""
    with torch.no_grad():
        K = layer.kernel_matrix(x)
    K_lr = layer.lowrank_kernel_matrix(x)
    if layer.spec.mode == "softmax":
        tiny = torch.finfo(K.dtype).tiny
        return (K * (K.clamp_min(tiny).log() - K_lr.clamp_min(tiny).log())).sum(-1).mean()
    return (K_lr - K).square().sum() / K.square().sum().clamp_min(1e-30)


def with_rank(layer: IntegralTransform, rank: int, kind: str | None = None) -> IntegralTransform:
    """Give ``layer`` fresh feature maps of rank ``rank`` (kind: the current one, or ``learned``)."""
    old = layer.features
    kind = kind or (old.kind if old is not None else "learned")
    features = FeatureMap(layer.heads, layer.head_dim if layer.q_proj is not None else 0, layer.kernel.width, rank,
                          kind, layer.spec.mode)
    param = next(layer.parameters())
    layer.features = features.to(device=param.device, dtype=param.dtype)
    layer.kernel = dataclasses.replace(layer.kernel, rank=rank, feature_map=kind)
    return layer


DEFAULT_LR = {"softmax": 3e-3, "linear": 1e-3}




def fit_feature_maps(
    layer: IntegralTransform,
    *,
    steps: int,
    seq: int,
    batch: int,
    lr: float,
    seed: int,
    held_out: torch.Tensor,
    eval_backend: str | None = "reference",
) -> dict[str, Any]:
    """Adam on ``layer.features`` only (the kernel's parameters frozen, their flags restored), in place.

    Returns the rank, the held-out relative output error before/after (computed with the backend
    ``eval_backend``, None: the layer's own), the first and last losses, the number of skipped
    (non-finite) steps and the seconds spent.
    """
    if layer.features is None:
        raise ValueError("the layer has no feature maps to fit: build it with rank=R")
    start = time.perf_counter()
    dtype = next(layer.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    before = relative_output_error(layer, held_out, eval_backend)
    frozen = [p for n, p in layer.named_parameters() if not n.startswith("features.")]
    flags = [p.requires_grad for p in frozen]
    params = list(layer.features.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    skipped = 0
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in range(steps):
            loss = kernel_loss(layer, torch.randn(batch, seq, layer.dim, generator=g, dtype=dtype))
            opt.zero_grad()
            loss.backward()
            if not (torch.isfinite(loss) and all(p.grad is None or torch.isfinite(p.grad).all() for p in params)):
                skipped += 1
                continue
            opt.step()
            losses.append(loss.item())
    finally:
        for p, flag in zip(frozen, flags):
            p.requires_grad_(flag)
    tail = losses[-10:]
    return {
        "rank": layer.features.rank,
        "error_before": before,
        "error_after": relative_output_error(layer, held_out, eval_backend),
        "loss_first": losses[0] if losses else math.nan,
        "loss_final": sum(tail) / len(tail) if tail else math.nan,
        "skipped_steps": skipped,
        "seconds": time.perf_counter() - start,
    }




def distill(
    layer: IntegralTransform,
    ranks: list[int] | None = None,
    *,
    feature_map: str | None = None,
    steps: int = 300,
    seq: int = 128,
    batch: int = 4,
    lr: float | None = None,
    seed: int = 0,
    eval_batches: int = 2,
    save_dir: str | Path | None = None,
    config: dict[str, Any] | None = None,
    eval_backend: str | None = "reference",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fit feature maps of ``layer`` to its exact kernel; a JSON-ready dict of the results.

    ``ranks=None``: fit the layer's own feature maps, in place (what a benchmark wants: the layer
    then runs the lowrank integrator with fitted features). ``ranks=[…]``: for each ``R`` a deep
    copy of ``layer`` gets fresh feature maps (kind ``feature_map``, default the layer's own or
    ``learned``) and is fitted; ``layer`` itself is left as it was. Every rank is evaluated on the
    same held-out batches (``eval_batches × batch`` sequences of length ``seq``). ``save_dir``
    writes each fitted layer as ``layer_R{R}.safetensors`` and, given its constructor arguments
    ``config``, ``layer_R{R}.json``. ``lr``: Adam's step (default :data:`DEFAULT_LR` of the mode).
    ``eval_backend``: the backend of the held-out evaluation
    (``reference``, the default, materializes every pair — quick to start at fitting lengths;
    None keeps the layer's own, e.g. ``torch`` for long ``seq``).
    """
    if steps < 0 or seq < 1 or batch < 1 or eval_batches < 1:
        raise ValueError(f"need steps >= 0, seq >= 1, batch >= 1, eval_batches >= 1; got {steps}, {seq}, {batch}, "
                         f"{eval_batches}")
    if ranks is not None and (not ranks or any(r < 1 for r in ranks)):
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    if ranks is None and layer.features is None:
        raise ValueError("the layer has no feature maps to fit: build it with rank=R or pass ranks")
    if layer.spec.support not in ("all", "causal"):
        raise ValueError(f"the lowrank integrator covers support 'all' or 'causal', not {layer.spec.support!r}")
    lr = DEFAULT_LR[layer.spec.mode] if lr is None else lr
    param = next(layer.parameters())
    g = torch.Generator().manual_seed(seed + 10_007)  # held-out: apart from the training draws
    held_out = torch.randn(eval_batches * batch, seq, layer.dim, generator=g, dtype=param.dtype).to(param.device)
    kind = feature_map or (layer.features.kind if layer.features is not None else "learned")
    results = []
    for rank in ranks if ranks is not None else [None]:
        if rank is None:
            fitted = layer
        else:
            fitted = copy.deepcopy(layer)
            torch.manual_seed(seed + rank)  # the features' initial draw
            with_rank(fitted, rank, kind)
        result = fit_feature_maps(fitted, steps=steps, seq=seq, batch=batch, lr=lr, seed=seed, held_out=held_out,
                     eval_backend=eval_backend)
        results.append(result)
        if progress is not None:
            progress(result)
        if save_dir is not None:
            save_fitted(fitted, Path(save_dir), config, kind)
    return {
        "layer": layer.extra_repr(),
        "mode": layer.spec.mode,
        "feature_map": kind,
        "loss": "kl_rows" if layer.spec.mode == "softmax" else "relative_mse",
        "steps": steps,
        "seq": seq,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "results": results,
    }


def save_fitted(layer: IntegralTransform, save_dir: Path, config: dict[str, Any] | None, kind: str) -> None:
    rank = layer.features.rank
    save_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in layer.state_dict().items()},
              str(save_dir / f"layer_R{rank}.safetensors"))
    if config is not None:
        (save_dir / f"layer_R{rank}.json").write_text(
            json.dumps({**config, "rank": rank, "feature_map": kind}, indent=2) + "\n")
