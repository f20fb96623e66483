"""What the low-rank integrator computes, shared by its three forms.

With features ``φ_i, ψ_j ∈ R^R`` per head (``F(s(i,j)) ≈ φ_i·ψ_j``, ``F = exp`` in softmax mode,
the identity in linear mode), source weights ``w_j`` and the decay ``D(i,j) = exp(−(τ_i − τ_j))``::

    num_i = Σ_{j visible} (φ_i·ψ_j) D(i,j) w_j v_j        den_i = Σ_{j visible} (φ_i·ψ_j) D(i,j) w_j
    linear:  out_i = num_i             softmax:  out_i = num_i / den_i   (0 where den_i = 0)

"Visible" is every source (non-causal) or ``j ≤ i`` in sequence order (causal). Both sums are
one linear-attention pass over ``x_j = [w_j v_j, w_j]`` (softmax) or ``x_j = w_j v_j`` (linear);
``E`` below is that width, ``e + 1`` or ``e``.

**State.** A causal pass carries ``S = Σ_{j seen} D(now, j) ψ_j x_jᵀ``, ``[B, H, R, E]``. ``τ`` of a
call is counted from the end of the previous call (``τ_{−1} = 0``): the state enters position
``i`` decayed by ``exp(−τ_i)``. So a sequence cut into pieces, each with its own running sum
of decay rates, gives the same outputs as the whole — what streaming and sequence-parallel
ranks rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``feature_map(inputs, detach_inputs=False) → (φ [B, H, Nq, R], ψ [B, H, Ns, R])``: a layer's feature maps
#: (:class:`itnet_scale.nn.FeatureMap`) applied to the exact kernel's :class:`~itnet_scale.ops.KernelInputs`.
FeatureMapFn = Callable[..., tuple[Tensor, Tensor]]


@dataclass
class LowRankInputs:
    """Per-head tensors of one low-rank call. ``B`` batch, ``H`` heads, ``Nq``/``Ns`` positions.

    phi: ``[B, H, Nq, R]`` query features ``φ_i``.
    psi: ``[B, H, Ns, R]`` source features ``ψ_j``.
    v: ``[B, H, Ns, e]`` values.
    weights: ``[B, H, Ns]`` source weights ``w_j`` (padding enters as 0), or None.
    tau: ``[B, H, N]`` cumulative decay from the start of this call (causal only; float64 is
        kept exact and the chunk-local differences are cast to ``v``'s dtype), or None.
    """

    phi: Tensor
    psi: Tensor
    v: Tensor
    weights: Tensor | None = None
    tau: Tensor | None = None


def state_width(e: int, normalize: bool) -> int:
    """``E``: the value width plus the normalizer column in softmax mode."""
    return e + 1 if normalize else e


def sources(inp: LowRankInputs, normalize: bool) -> Tensor:
    """``x_j = [w_j v_j, w_j]`` (softmax) or ``w_j v_j`` (linear): ``[B, H, Ns, E]``."""
    v = inp.v
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    return v if inp.weights is None else v * inp.weights[..., None]


def readout(y: Tensor, normalize: bool) -> Tensor:
    """``num`` (linear) or ``num / den`` (softmax, 0 where nothing is visible): ``[..., E]`` → ``[..., e]``."""
    if not normalize:
        return y
    num, den = y[..., :-1], y[..., -1:]
    return num / den.masked_fill(den == 0, 1.0)


def check_lowrank_inputs(inp: LowRankInputs, causal: bool, normalize: bool, initial_state: Tensor | None) -> None:
    """Raise a ``ValueError`` naming the tensor whose shape does not fit."""
    if inp.phi.dim() != 4 or inp.psi.dim() != 4 or inp.v.dim() != 4:
        raise ValueError(f"phi, psi and v must be [batch, heads, n, features], got {tuple(inp.phi.shape)}, "
                         f"{tuple(inp.psi.shape)}, {tuple(inp.v.shape)}")
    B, H, Nq, R = inp.phi.shape
    Ns, e = inp.v.shape[2], inp.v.shape[3]
    if tuple(inp.psi.shape) != (B, H, Ns, R):
        raise ValueError(f"psi must be [{B}, {H}, {Ns}, {R}] (batch, heads, sources, rank), got {tuple(inp.psi.shape)}")
    if tuple(inp.v.shape[:2]) != (B, H):
        raise ValueError(f"v must be [{B}, {H}, sources, value_dim], got {tuple(inp.v.shape)}")
    if inp.weights is not None and tuple(inp.weights.shape) != (B, H, Ns):
        raise ValueError(f"weights must be [{B}, {H}, {Ns}], got {tuple(inp.weights.shape)}")
    if causal and Nq != Ns:
        raise ValueError(f"a causal low-rank pass needs as many queries as sources, got {Nq} and {Ns}")
    if inp.tau is not None:
        if not causal:
            raise ValueError("decay (tau) needs a causal low-rank pass")
        if tuple(inp.tau.shape) != (B, H, Ns):
            raise ValueError(f"tau must be [{B}, {H}, {Ns}], got {tuple(inp.tau.shape)}")
    if initial_state is not None:
        if not causal:
            raise ValueError("initial_state is only defined for a causal low-rank pass")
        want = (B, H, R, state_width(e, normalize))
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must be {list(want)} (batch, heads, rank, value_dim"
                             f"{' + 1' if normalize else ''}), got {tuple(initial_state.shape)}")
