"""Fit a layer's low-rank feature maps ``φ, ψ`` to its exact kernel (DESIGN §1, "lowrank").

Only the feature maps train; the exact kernel's parameters stay frozen, so after fitting the
same layer runs either integrator. Inputs are random features ``x ~ N(0, 1)`` at positions
``0 … seq−1`` (the tool has no data; a trained layer sees its own projections of them).

Loss per kernel row ``i`` (both kernels materialized at the fitting length):

- softmax mode: ``KL(K_i ‖ K̃_i)``, exact rows against the low-rank integrator's normalized rows;
- linear mode: ``‖K̃_i − K_i‖² / ‖K_i‖²``.

Quality is reported as the relative output error ``‖y_lowrank − y_exact‖ / ‖y_exact‖`` of the
layer on held-out inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.nn.integral_transform import IntegralTransform


@dataclass
class DistillResult:
    """Held-out relative output error before and after fitting, and the loss per step."""

    rank: int
    error_before: float
    error_after: float
    losses: list[float] = field(default_factory=list)


def relative_output_error(layer: IntegralTransform, x: Tensor) -> float:
    """``‖y_lowrank − y_exact‖ / ‖y_exact‖`` of ``layer`` on ``x``; the layer's integrator is restored."""
    saved = layer.integrator
    try:
        with torch.no_grad():
            layer.integrator = "exact"
            exact = layer(x)
            layer.integrator = "lowrank"
            approx = layer(x)
    finally:
        layer.integrator = saved
    return ((approx - exact).norm() / exact.norm()).item()


def kernel_loss(layer: IntegralTransform, x: Tensor) -> Tensor:
    """The fitting loss of the current feature maps on ``x`` (see the module docstring)."""
    with torch.no_grad():
        K = layer.kernel_matrix(x)
    K_lr = layer.lowrank_kernel_matrix(x)
    if layer.spec.mode == "softmax":
        tiny = torch.finfo(K.dtype).tiny
        return (K * (K.clamp_min(tiny).log() - K_lr.clamp_min(tiny).log())).sum(-1).mean()
    return ((K_lr - K).square().sum(-1) / K.square().sum(-1).clamp_min(1e-30)).mean()


def fit_feature_maps(
    layer: IntegralTransform,
    *,
    steps: int = 300,
    seq: int = 128,
    batch: int = 4,
    lr: float = 3e-3,
    eval_batches: int = 2,
    seed: int = 0,
) -> DistillResult:
    """Train ``layer.features`` toward ``layer``'s exact kernel; other parameters are not touched."""
    if layer.features is None:
        raise ValueError("the layer has no feature maps to fit: build it with rank=R")
    g = torch.Generator().manual_seed(seed)
    dtype = next(layer.parameters()).dtype

    def inputs() -> Tensor:
        return torch.randn(batch, seq, layer.dim, generator=g, dtype=dtype)

    held_out = torch.cat([inputs() for _ in range(eval_batches)])
    result = DistillResult(layer.features.rank, relative_output_error(layer, held_out), float("nan"))
    frozen = [p for n, p in layer.named_parameters() if not n.startswith("features.")]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(layer.features.parameters(), lr=lr)
    try:
        for _ in range(steps):
            loss = kernel_loss(layer, inputs())
            opt.zero_grad()
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
    finally:
        for p, flag in zip(frozen, flags):
            p.requires_grad_(flag)
    result.error_after = relative_output_error(layer, held_out)
    return result


def with_rank(layer: IntegralTransform, rank: int, kind: str | None = None) -> IntegralTransform:
    """Give ``layer`` fresh feature maps of rank ``rank`` (kind: the current one, or ``learned``)."""
    old = layer.features
    kind = kind or (old.kind if old is not None else "learned")
    features = FeatureMap(layer.heads, layer.head_dim if layer.q_proj is not None else 0, layer.kernel_width, rank,
                          kind, layer.spec.mode)
    param = next(layer.parameters())
    layer.features = features.to(device=param.device, dtype=param.dtype)
    return layer
