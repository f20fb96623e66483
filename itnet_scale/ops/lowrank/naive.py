"""The low-rank integrator with ``φ ψᵀ`` materialized: ``O(Nq·Ns)``, the spec of :mod:`.chunk`."""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.lowrank.spec import LowRankInputs, readout, sources


def lowrank_naive(
    inp: LowRankInputs,
    *,
    causal: bool,
    normalize: bool,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(out [B, H, Nq, e], final state [B, H, R, E] or None)``; see :mod:`.spec`.

    ``normalize`` is softmax mode (divide by ``den``); ``initial_state`` and the final state
    exist for causal passes only.
    """
    K = lowrank_kernel_matrix(inp, causal=causal, normalize=False)   # (φ_i·ψ_j) D w [j ≤ i]  [B, H, Nq, Ns]
    v = inp.v if not normalize else torch.cat([inp.v, torch.ones_like(inp.v[..., :1])], -1)
    y = K @ v
    if not causal:
        return readout(y, normalize), None
    tau = inp.tau if inp.tau is not None else K.new_zeros(*K.shape[:2], K.shape[-1])
    final = torch.einsum("bhj,bhjr,bhje->bhre", (tau - tau[..., -1:]).exp().to(K.dtype), inp.psi,
                         sources(inp, normalize))
    if initial_state is not None:
        y = y + (-tau).exp().to(K.dtype)[..., None] * (inp.phi @ initial_state)
        final = final + (-tau[..., -1]).exp().to(K.dtype)[..., None, None] * initial_state
    return readout(y, normalize), final


def lowrank_kernel_matrix(inp: LowRankInputs, *, causal: bool, normalize: bool) -> Tensor:
    """The kernel the low-rank integrator applies, ``[B, H, Nq, Ns]`` (the counterpart of the exact
    :func:`itnet_scale.ops.kernel_matrix`; used to fit feature maps)::

        K̃(i,j) = (φ_i·ψ_j) D(i,j) w_j [j ≤ i]      (linear)     and row-normalized (softmax)
    """
    A = inp.phi @ inp.psi.transpose(-1, -2)
    if inp.weights is not None:
        A = A * inp.weights[:, :, None, :]
    if causal:
        N = A.shape[-1]
        later = torch.ones(N, N, dtype=torch.bool, device=A.device).triu(1)
        tau = inp.tau if inp.tau is not None else A.new_zeros(*A.shape[:2], N)
        A = A * (tau[..., None, :] - tau[..., :, None]).masked_fill(later, float("-inf")).exp().to(A.dtype)
    if not normalize:
        return A
    total = A.sum(-1, keepdim=True)
    return A / total.masked_fill(total == 0, 1.0)
