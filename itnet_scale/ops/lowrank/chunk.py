"""The low-rank integrator in chunks: ``O(N·C·R + N·R·E)`` for causal passes, ``O(N·R·E)`` otherwise.

Causal (gated-linear-attention style, chunk size ``C``). Within chunk ``c`` every ``τ`` is taken
relative to the position before the chunk, ``g_i = τ_i − τ_{start−1}`` (computed in float64 and
then cast, so long sequences never overflow or lose precision)::

    intra_i = Σ_{start ≤ j ≤ i} (φ_i·ψ_j) exp(g_j − g_i) x_j        (a C×C block, masked)
    inter_i = exp(−g_i) φ_i S_c                                      (S_c: state entering chunk c)
    S_{c+1} = exp(−g_last) S_c + Σ_j exp(g_j − g_last) ψ_j x_jᵀ

Every exponent is ``≤ 0`` when the decay rates are non-negative. Non-causal:
``y = φ (ψᵀ x)``. Autograd differentiates all of it; the loop runs over chunks, not positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from itnet_scale.ops.lowrank.spec import LowRankInputs, readout, sources, state_width

DEFAULT_CHUNK = 64


def lowrank_chunk(
    inp: LowRankInputs,
    *,
    causal: bool,
    normalize: bool,
    initial_state: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """``(out [B, H, Nq, e], final state [B, H, R, E] or None)``; same contract as :func:`.naive.lowrank_naive`."""
    x = sources(inp, normalize)                                     # [B, H, N, E]
    if not causal:
        return readout(inp.phi @ (inp.psi.transpose(-1, -2) @ x), normalize), None
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, H, N, R = inp.phi.shape
    C = chunk_size
    n = -(-N // C)
    pad = n * C - N
    tau = inp.tau if inp.tau is not None else torch.zeros(B, H, N, dtype=torch.float64, device=x.device)
    # padded positions: no feature, no source, no decay (τ repeats the last value)
    phi, psi, x = (F.pad(t, (0, 0, 0, pad)).unflatten(2, (n, C)) for t in (inp.phi, inp.psi, x))
    tau = torch.cat([tau, tau[..., -1:].expand(B, H, pad)], -1).unflatten(2, (n, C))   # [B, H, n, C]
    start = torch.cat([tau.new_zeros(B, H, 1), tau[:, :, :-1, -1]], -1)               # τ before each chunk
    g64 = tau - start[..., None]                                                          # chunk-local, ≥ 0
    g = g64.to(x.dtype)

    later = torch.ones(C, C, dtype=torch.bool, device=x.device).triu(1)
    log_d = (g64[..., None, :] - g64[..., :, None]).to(x.dtype).masked_fill(later, float("-inf"))
    intra = ((phi @ psi.transpose(-1, -2)) * log_d.exp()) @ x                             # [B, H, n, C, E]
    to_end = (g[..., -1:] - g).neg().exp()                                                # exp(g_j − g_last)
    local = (psi * to_end[..., None]).transpose(-1, -2) @ x                               # [B, H, n, R, E]
    across = g[..., -1].neg().exp()                                                       # [B, H, n]

    state = initial_state if initial_state is not None else x.new_zeros(B, H, R, state_width(inp.v.shape[-1],
                                                                                            normalize))
    entering = []
    # unbind once: indexing chunk c of `local` inside the loop would make backward write each
    # chunk's gradient into a zero tensor the size of all chunks — O(n²) memory traffic.
    for local_c, across_c in zip(local.unbind(2), across.unbind(2)):
        entering.append(state)
        state = across_c[..., None, None] * state + local_c
    inter = (phi * g.neg().exp()[..., None]) @ torch.stack(entering, 2)                  # [B, H, n, C, E]
    y = (intra + inter).flatten(2, 3)[:, :, :N]
    return readout(y, normalize), state
