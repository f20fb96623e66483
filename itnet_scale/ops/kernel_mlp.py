"""The kernel MLP ``w2ᵀσ(… σ(a_i + b_j))`` on a tile of pairs: forward and hand-written backward.

This is the one term of the score that costs ``O(Nq·Ns·r)``; everything else is a matmul or
``O(Nq·Ns)``. The tiled form recomputes it in backward and applies the closed-form
derivative of ``σ`` instead of taping autograd over ``[B, H, r, nq, ns]`` tensors::

    g_ijr = ds_ij · w2_r · σ'(a_ir + b_jr)                      (single layer)
    da_ir = Σ_j g_ijr      db_jr = Σ_i g_ijr      dw2_r = Σ_ij ds_ij · σ(a_ir + b_jr)

These are loop nests over ``(r, i, j)`` that ``torch.compile`` fuses into vectorized C++ on
CPU (Triton on GPU) without materializing ``z`` (:mod:`itnet_scale.ops.compile`); in float64 (the
tests' exactness checks) or without a compiler they run eagerly. :func:`itnet_scale.ops.spec.kernel_mlp`
is the plain autograd definition they are tested against.

Layout: ``r`` comes *before* the pair axes (``a`` as ``[B, H, r, nq]``, ``b`` as ``[B, H, r, ns]``), so the
innermost loop runs along the sources and vectorizes fully; with ``r`` innermost (``r = 8`` or 16 is half a
vector or less) the same loops ran 3–7× slower on CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def activation_and_derivative(name: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ(z), σ'(z))`` for each activation of :data:`itnet_scale.ops.spec.ACTIVATIONS`."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * _SQRT_HALF))
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if name == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)
        return 0.5 * z * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    if name == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1.0 + z * (1.0 - s))
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s, s * (1.0 - s)
    if name == "softplus":
        return F.softplus(z), torch.sigmoid(z)
    if name == "tanh":
        t = torch.tanh(z)
        return t, 1.0 - t * t
    raise ValueError(f"no closed-form derivative for activation {name!r}")


def _hidden_layers(mlp_w: Tensor | None, mlp_c: Tensor | None) -> list[tuple[Tensor, Tensor]]:
    return [] if mlp_w is None else list(zip(mlp_w, mlp_c))


def _hidden(h: Tensor, W: Tensor, c: Tensor) -> Tensor:
    """Pre-activation of a hidden layer: ``W h + c`` per head, ``[B, H, r, nq, ns]``."""
    return torch.einsum("bhrqs,hor->bhoqs", h, W) + c[None, :, :, None, None]


def mlp_layers(
    a: Tensor,
    b: Tensor,
    mlp_w: Tensor | None,
    mlp_c: Tensor | None,
    activation: str,
) -> tuple[list[Tensor], list[Tensor]]:
    """Each layer's activations ``σ(pre)`` and slopes ``σ'(pre)``, ``[B, H, r, nq, ns]`` each.

    The first layer's pre-activation is ``z = a_i + b_j`` (``a`` ``[B, H, r, nq]``, ``b`` ``[B, H, r, ns]``: ``r``
    first, see the module doc; the position term ``Ua (p_i − p_j)`` is already folded into them, see
    :mod:`itnet_scale.ops.tiled`); hidden layers follow (``mlp_w`` ``[L, H, r, r]``, ``mlp_c`` ``[L, H, r]``).
    """
    z = a[..., :, None] + b[..., None, :]
    h, slope = activation_and_derivative(activation, z)
    acts, slopes = [h], [slope]
    for W, c in _hidden_layers(mlp_w, mlp_c):
        h, slope = activation_and_derivative(activation, _hidden(h, W, c))
        acts.append(h)
        slopes.append(slope)
    return acts, slopes


def mlp_scores(acts: list[Tensor], w2: Tensor) -> Tensor:
    """The read-out ``w2ᵀ h_L``: ``[B, H, nq, ns]``."""
    return (acts[-1] * w2[None, :, :, None, None]).sum(2)


class MLPGrads(NamedTuple):
    """Gradients of the kernel MLP's inputs and weights (``a``, ``b`` in the layout they came in)."""

    a: Tensor
    b: Tensor
    w2: Tensor
    mlp_w: Tensor | None
    mlp_c: Tensor | None


def mlp_backward(
    acts: list[Tensor],
    slopes: list[Tensor],
    w2: Tensor,
    mlp_w: Tensor | None,
    ds: Tensor,
) -> MLPGrads:
    """Gradients of ``Σ_ij ds_ij · mlp_scores(acts, w2)_ij``, by hand-written backprop.

    ``acts``/``slopes`` come from :func:`mlp_layers` (the forward's recomputation, reused).
    ``da`` is ``[B, H, r, nq]``, ``db`` ``[B, H, r, ns]`` (``a``'s and ``b``'s layout); ``mlp_w``, ``mlp_c`` are
    None without hidden layers.
    """
    dsr = ds[:, :, None]
    dw2 = (dsr * acts[-1]).sum((0, 3, 4))
    grad_h = dsr * w2[None, :, :, None, None]
    dWs, dcs = [], []
    Ws = [] if mlp_w is None else list(mlp_w)
    for W, h_in, slope in zip(reversed(Ws), reversed(acts[:-1]), reversed(slopes[1:])):
        grad_pre = grad_h * slope
        dWs.append(torch.einsum("bhoqs,bhrqs->hor", grad_pre, h_in))
        dcs.append(grad_pre.sum((0, 3, 4)))
        grad_h = torch.einsum("bhoqs,hor->bhrqs", grad_pre, W)
    grad_z = grad_h * slopes[0]
    dmlp_w, dmlp_c = (torch.stack(dWs[::-1]), torch.stack(dcs[::-1])) if Ws else (None, None)
    return MLPGrads(grad_z.sum(4), grad_z.sum(3), dw2, dmlp_w, dmlp_c)
