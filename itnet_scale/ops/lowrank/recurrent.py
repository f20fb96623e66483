"""The low-rank integrator one position at a time, with an explicit state (streaming).

Per position ``t`` with decay increment ``Δτ_t = τ_t − τ_{t−1}``::

    S ← exp(−Δτ_t) S + ψ_t x_tᵀ          y_t = φ_t S          out_t = readout(y_t)
"""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.lowrank.spec import LowRankInputs, readout, sources, state_width


def lowrank_step(
    state: Tensor | None,
    phi: Tensor,
    psi: Tensor,
    v: Tensor,
    *,
    normalize: bool,
    weight: Tensor | None = None,
    decay: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One position: ``(out [B, H, e], new state [B, H, R, E])``.

    Args:
        state: ``[B, H, R, E]`` or None (nothing seen yet).
        phi, psi: ``[B, H, R]`` this position's features.
        v: ``[B, H, e]`` its value; ``weight`` ``[B, H]`` its source weight.
        decay: ``[B, H]`` the increment ``Δτ_t`` since the previous position (None: no decay).
    """
    x = sources(LowRankInputs(phi[:, :, None], psi[:, :, None], v[:, :, None],
                              None if weight is None else weight[:, :, None]), normalize)[:, :, 0]
    update = psi[..., :, None] * x[..., None, :]
    if state is None:
        state = update.new_zeros(*psi.shape, state_width(v.shape[-1], normalize))
    if decay is not None:
        state = (-decay).exp().to(state.dtype)[..., None, None] * state
    state = state + update
    return readout((phi[..., None, :] @ state)[..., 0, :], normalize), state


def lowrank_recurrent(
    inp: LowRankInputs,
    *,
    normalize: bool,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """A causal pass as a loop of :func:`lowrank_step`: ``(out [B, H, N, e], final state)``."""
    N = inp.v.shape[2]
    state, outs = initial_state, []
    prev = None
    for t in range(N):
        decay = None
        if inp.tau is not None:
            tau_t = inp.tau[:, :, t]
            decay = tau_t if prev is None else tau_t - prev
            prev = tau_t
        out, state = lowrank_step(state, inp.phi[:, :, t], inp.psi[:, :, t], inp.v[:, :, t], normalize=normalize,
                                  weight=None if inp.weights is None else inp.weights[:, :, t], decay=decay)
        outs.append(out)
    return torch.stack(outs, dim=2), state
