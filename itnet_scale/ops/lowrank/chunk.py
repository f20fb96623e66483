"""The low-rank integrator in chunks: ``O(N·C·R + N·R·E)`` for causal passes, ``O(N·R·E)`` otherwise.

Causal (gated-linear-attention style, chunk size ``C``). Within chunk ``c`` every ``τ`` is taken
relative to the position before the chunk, ``g_i = τ_i − τ_{start−1}`` (computed in float64 and
then cast, so long sequences never overflow or lose precision)::

    M_ij    = exp(g_j − g_i) [j ≤ i]                                 (C×C decay mask, every exponent ≤ 0)
    A       = (φ ψᵀ) ⊙ M
    y       = A x + (exp(−g) ⊙ φ) S_c                                 (S_c: state entering chunk c)
    S_{c+1} = exp(−g_last) S_c + (exp(g − g_last) ⊙ ψ)ᵀ x

Non-causal: ``y = φ (ψᵀ x)``. The causal scan is one ``autograd.Function`` (the same computation as fused Triton
kernels: :mod:`itnet_scale.ops.triton.lowrank_chunk`) whose backward is
written out below: it keeps only ``φ, ψ, x, g`` and the entering states, and rebuilds the C×C
blocks, so a long sequence holds ``O(N·(R + E))`` for backward instead of every block's
temporaries (which dominated the memory, and with it the time, of long causal passes on CPU).
The loop over chunks carries only the small ``[R, E]`` state; everything else is batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from itnet_scale.ops.lowrank.spec import LowRankInputs, readout, sources, state_width
from itnet_scale.ops.triton import causal_scan_triton, kernel_chunk

DEFAULT_CHUNK = 64
SCANS = ("torch", "triton")


def lowrank_chunk(
    inp: LowRankInputs,
    *,
    causal: bool,
    normalize: bool,
    initial_state: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    scan: str = "torch",
) -> tuple[Tensor, Tensor | None]:
    """``(out [B, H, Nq, e], final state [B, H, R, E] or None)``; same contract as :func:`.naive.lowrank_naive`.

    ``scan`` runs a causal pass's scan in ``torch`` (:class:`CausalChunkScan`) or in ``triton``
    (:func:`itnet_scale.ops.triton.causal_scan_triton`, with ``chunk_size`` rounded to a power of two in
    ``[16, 64]``, :func:`~itnet_scale.ops.triton.kernel_chunk`); the sources and the readout are the same torch for
    both, and a non-causal pass is two matmuls either way."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    x = sources(inp, normalize)                                     # [B, H, N, E]
    if not causal:
        return readout(inp.phi @ (inp.psi.transpose(-1, -2) @ x), normalize), None
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if scan == "triton":
        y, final = causal_scan_triton(inp.phi, inp.psi, x, inp.tau, initial_state, chunk_size=kernel_chunk(chunk_size))
        return readout(y, normalize), final
    B, H, N, R = inp.phi.shape
    C = chunk_size
    n = -(-N // C)
    pad = n * C - N
    tau = inp.tau if inp.tau is not None else torch.zeros(B, H, N, dtype=torch.float64, device=x.device)
    # padded positions: no feature, no source, no decay (τ repeats the last value)
    phi, psi, x = (F.pad(t, (0, 0, 0, pad)).unflatten(2, (n, C)) for t in (inp.phi, inp.psi, x))
    tau = torch.cat([tau, tau[..., -1:].expand(B, H, pad)], -1).unflatten(2, (n, C))   # [B, H, n, C]
    start = torch.cat([tau.new_zeros(B, H, 1), tau[:, :, :-1, -1]], -1)               # τ before each chunk
    g = tau - start[..., None]                                                            # chunk-local, ≥ 0
    state = initial_state if initial_state is not None else x.new_zeros(B, H, R, state_width(inp.v.shape[-1],
                                                                                            normalize))
    y, final = CausalChunkScan.apply(phi, psi, x, g, state)
    return readout(y.flatten(2, 3)[:, :, :N], normalize), final


def _decay_terms(g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From chunk-local ``g`` ``[B, H, n, C]`` (float64): ``M`` ``[.., C, C]``, ``exp(−g)``,
    ``exp(g − g_last)`` and ``exp(−g_last)`` ``[B, H, n]``, all in ``dtype``."""
    C = g.shape[-1]
    later = torch.ones(C, C, dtype=torch.bool, device=g.device).triu(1)
    g = g.to(dtype)  # chunk-local: small, so differences within a chunk are exact enough in ``dtype``
    M = (g[..., None, :] - g[..., :, None]).masked_fill_(later, float("-inf")).exp_()
    last = g[..., -1:]
    return M, g.neg().exp(), (g - last).exp(), last[..., 0].neg().exp()


class CausalChunkScan(torch.autograd.Function):
    """``(y [B, H, n, C, E], final state [B, H, R, E])`` from chunked ``φ, ψ`` ``[B, H, n, C, R]``,
    ``x`` ``[B, H, n, C, E]``, chunk-local ``g`` ``[B, H, n, C]`` (float64) and the initial state."""

    @staticmethod
    def forward(ctx: FunctionCtx, phi: Tensor, psi: Tensor, x: Tensor, g: Tensor, state: Tensor
                ) -> tuple[Tensor, Tensor]:
        M, from_start, to_end, across = _decay_terms(g, x.dtype)
        local = (psi * to_end[..., None]).transpose(-1, -2) @ x                 # [B, H, n, R, E]
        entering = []
        for local_c, across_c in zip(local.unbind(2), across.unbind(2)):
            entering.append(state)
            state = across_c[..., None, None] * state + local_c
        entering = torch.stack(entering, 2)                                     # S_c  [B, H, n, R, E]
        y = ((phi @ psi.transpose(-1, -2)) * M) @ x
        y += (phi * from_start[..., None]) @ entering
        ctx.save_for_backward(phi, psi, x, g, entering)
        return y, state

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor, dfinal: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        phi, psi, x, g, entering = ctx.saved_tensors
        M, from_start, to_end, across = _decay_terms(g, x.dtype)
        # intra-chunk: y = A x with A = (φψᵀ) ⊙ M; ∂M_ij/∂g_j = M_ij, ∂M_ij/∂g_i = −M_ij
        A = (phi @ psi.transpose(-1, -2)) * M
        dA = dy @ x.transpose(-1, -2)
        dx = A.transpose(-1, -2) @ dy
        Z = dA * A
        dg = Z.sum(-2) - Z.sum(-1)
        dA *= M
        dphi = dA @ psi
        dpsi = dA.transpose(-1, -2) @ phi
        del A, dA, Z, M
        # inter-chunk read: y += (exp(−g) ⊙ φ) S_c
        q = phi * from_start[..., None]
        dq = dy @ entering.transpose(-1, -2)                                   # [B, H, n, C, R]
        dphi += dq * from_start[..., None]
        dg -= (dq * q).sum(-1)
        d_read = q.transpose(-1, -2) @ dy                                       # ∂L/∂S_c through the read
        # the state chain S_{c+1} = a_c S_c + L_c, run backwards: d_next[c] = ∂L/∂S_{c+1}
        carry = dfinal if dfinal is not None else torch.zeros_like(entering[:, :, 0])
        d_next = []
        for c in range(entering.shape[2] - 1, -1, -1):
            d_next.append(carry)
            carry = across[:, :, c, None, None] * carry + d_read[:, :, c]
        d_next = torch.stack(d_next[::-1], 2)                                   # [B, H, n, R, E]
        dg[..., -1] -= across * (entering * d_next).sum((-1, -2))               # a_c = exp(−g_last)
        k = psi * to_end[..., None]                                             # L_c = kᵀ x
        dk = x @ d_next.transpose(-1, -2)                                       # [B, H, n, C, R]
        dx += k @ d_next
        dpsi += dk * to_end[..., None]
        w = (dk * k).sum(-1)                                                    # ∂/∂g_j of exp(g_j − g_last)
        dg += w
        dg[..., -1] -= w.sum(-1)
        return dphi, dpsi, dx, dg.to(g.dtype), carry
