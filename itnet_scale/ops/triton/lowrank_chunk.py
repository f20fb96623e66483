"""The low-rank integrator's causal chunk scan in Triton, forward and backward, as one autograd function.

The computation of :class:`itnet_scale.ops.lowrank.chunk.CausalChunkScan` on the scalar-decay chunk pattern of
gated linear attention (flash-linear-attention's ``chunk`` kernels split it the same way): per chunk ``c`` of ``C``
positions, with chunk-local ``g_i = τ_i − τ_{start−1}`` (``τ`` loaded as stored, float64 keeps it exact, the
difference cast to float32) and ``S_c`` the state entering the chunk::

    y       = ((φ ψᵀ) ⊙ M) x + (e^{−g} ⊙ φ) S_c               M_ij = e^{g_j − g_i} [j ≤ i]
    S_{c+1} = e^{−g_last} S_c + (e^{g − g_last} ⊙ ψ)ᵀ x        (h ← h·e^{−Δτ} + kᵀ x)

``x`` is the sources ``[w v, w]`` in softmax mode, so the normalizer column is carried as one more value column;
the state is ``[R, E]`` per batch·head and the kernels tile it over ``E`` (``BLOCK_E`` columns per program), each
program holding all of ``R`` (padded to a power of two ≥ 16 with masks, as ``C`` and ``BLOCK_E`` are: ``tl.dot``'s
minimum on a GPU). Four launches, none with atomics (two runs give bitwise-equal results):

1. **states**, one program per (value block, batch·head), chunks in order: stores every ``S_c`` (float32) and
   the final state;
2. **outputs**, one program per (chunk, value block, batch·head): ``y`` of the chunk from ``S_c``;
3. **state gradients**, per (value block, batch·head), chunks in reverse: ``dS_{c+1}`` of every chunk
   (``carry ← e^{−g_last} carry + (e^{−g} ⊙ φ)ᵀ dy``, from ``dfinal``) and ``dh0``, the initial state's;
4. **chunk gradients**, per (chunk, value block, batch·head): ``dx`` on its columns, and its value block's
   partial ``dφ``, ``dψ`` and ``dg`` (sums over ``E``), which torch adds up; ``dτ`` follows from ``dg`` (each
   chunk's ``g`` is relative to the previous chunk's last ``τ``).

Inputs may be float32, bfloat16 or float16 (upcast after loading; ``tl.dot`` in IEEE float32 for float32 inputs,
TF32 for 16-bit ones); float64 features run on torch (:func:`scan_unsupported`). The sources, the readout
(``num / den``) and their gradients are torch's (:func:`itnet_scale.ops.lowrank.lowrank_chunk` with
``backend="triton"``). No GPU timing has been measured; the defaults (``C = 64``, ``BLOCK_E = min(64, E)``
rounded up to a power of two, 4 warps) are untuned. Autotune candidates to measure, untuned::

    Hopper (H100/H200): (CHUNK, BLOCK_E, num_warps) in (64, 64, 4), (64, 32, 4), (64, 64, 8), (32, 64, 4)
    Ampere (A100):      (64, 32, 4), (32, 64, 4), (64, 64, 8)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from itnet_scale.ops.triton.exact_forward import (
    DEFAULT_BLOCK,
    MIN_DOT,
    _block_for,
    _check_power_of_two,
    _power_of_two,
    check_runnable,
    padded_extent,
)

DEFAULT_CHUNK = 64
MAX_CHUNK = 64  # a [C, C] float32 block per program: 64 × 64 is what fits in registers beside the state tile
SCAN_NUM_WARPS = 4


@triton.jit
def _chunk_decay(tau_ptr, bh, N, c, offs_t, t_in, CHUNK: tl.constexpr):
    """Chunk-local decay of chunk ``c``: ``g`` ``[CHUNK]`` (float32; positions past ``N`` repeat the last one's),
    ``g_last`` (the last real position's) and that position's index."""
    base = tau_ptr + bh * N
    start = tl.where(c > 0, tl.load(base + tl.maximum(c * CHUNK - 1, 0)), 0.0)  # τ_{−1} = 0
    last = tl.minimum(c * CHUNK + CHUNK, N) - 1
    g_last = (tl.load(base + last) - start).to(tl.float32)
    g = tl.where(t_in, (tl.load(base + offs_t, mask=t_in, other=0.0) - start).to(tl.float32), g_last)
    return g, g_last, last


@triton.jit
def _rows(ptr, bh, N, width, offs_t, t_in, offs_c, c_in):
    """Rows ``offs_t``, columns ``offs_c`` of a contiguous ``[BH, N, width]`` tensor, float32, 0 where masked."""
    return tl.load(ptr + (bh * N + offs_t[:, None]) * width + offs_c[None, :],
                   mask=t_in[:, None] & c_in[None, :], other=0.0).to(tl.float32)


@triton.jit
def _scan_states_kernel(
    psi_ptr, x_ptr, tau_ptr, h0_ptr, states_ptr, final_ptr, N, R, E, n_chunks,
    HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, CHUNK: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``S_c`` of every chunk (``states`` ``[BH, n, R, E]``, float32) and the final state, on one value block."""
    pid_e = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_r = tl.arange(0, R_PAD)
    r_in = offs_r < R
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_in = offs_e < E
    tile = offs_r[:, None] * E + offs_e[None, :]
    tile_in = r_in[:, None] & e_in[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + bh * R * E + tile, mask=tile_in, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([R_PAD, BLOCK_E], tl.float32)
    for c in range(0, n_chunks):
        tl.store(states_ptr + (bh * n_chunks + c) * R * E + tile, h, mask=tile_in)
        offs_t = c * CHUNK + tl.arange(0, CHUNK)
        t_in = offs_t < N
        k = _rows(psi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
        x = _rows(x_ptr, bh, N, E, offs_t, t_in, offs_e, e_in)
        if HAS_DECAY:
            g, g_last, _ = _chunk_decay(tau_ptr, bh, N, c, offs_t, t_in, CHUNK)
            k = k * tl.exp(g - g_last)[:, None]
            h = h * tl.exp(-g_last)
        h += tl.dot(tl.trans(k), x, input_precision=DOT_PRECISION)
    tl.store(final_ptr + bh * R * E + tile, h.to(final_ptr.dtype.element_ty), mask=tile_in)


@triton.jit
def _intra_mask(g, offs_local, HAS_DECAY: tl.constexpr):
    """``M`` ``[CHUNK, CHUNK]``: ``e^{g_j − g_i}`` where ``j ≤ i``, else 0."""
    causal = offs_local[:, None] >= offs_local[None, :]
    if HAS_DECAY:
        m = tl.where(causal, tl.exp(tl.where(causal, g[None, :] - g[:, None], 0.0)), 0.0)
    else:
        m = tl.where(causal, 1.0, 0.0)
    return m


@triton.jit
def _scan_outputs_kernel(
    phi_ptr, psi_ptr, x_ptr, tau_ptr, states_ptr, y_ptr, N, R, E, n_chunks,
    HAS_DECAY: tl.constexpr, CHUNK: tl.constexpr, R_PAD: tl.constexpr, BLOCK_E: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``y`` of one chunk on one value block: the intra-chunk block plus the entering state's read."""
    c = tl.program_id(0)
    pid_e = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_local = tl.arange(0, CHUNK)
    offs_t = c * CHUNK + offs_local
    t_in = offs_t < N
    offs_r = tl.arange(0, R_PAD)
    r_in = offs_r < R
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_in = offs_e < E
    q = _rows(phi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
    k = _rows(psi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
    x = _rows(x_ptr, bh, N, E, offs_t, t_in, offs_e, e_in)
    state = tl.load(states_ptr + (bh * n_chunks + c) * R * E + offs_r[:, None] * E + offs_e[None, :],
                    mask=r_in[:, None] & e_in[None, :], other=0.0)
    g = tl.zeros([CHUNK], tl.float32)
    if HAS_DECAY:
        g, _, _ = _chunk_decay(tau_ptr, bh, N, c, offs_t, t_in, CHUNK)
    a = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * _intra_mask(g, offs_local, HAS_DECAY)
    y = tl.dot(a, x, input_precision=DOT_PRECISION)
    if HAS_DECAY:
        q = q * tl.exp(-g)[:, None]
    y += tl.dot(q, state, input_precision=DOT_PRECISION)
    tl.store(y_ptr + (bh * N + offs_t[:, None]) * E + offs_e[None, :], y.to(y_ptr.dtype.element_ty),
             mask=t_in[:, None] & e_in[None, :])


@triton.jit
def _scan_state_grads_kernel(
    phi_ptr, dy_ptr, tau_ptr, dfinal_ptr, dnext_ptr, dh0_ptr, N, R, E, n_chunks,
    HAS_DECAY: tl.constexpr, STORE_DH0: tl.constexpr, CHUNK: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``∂L/∂S_{c+1}`` of every chunk (``dnext`` ``[BH, n, R, E]``) and ``∂L/∂S_0``, in reverse, on one value
    block: ``carry ← e^{−g_last} carry + (e^{−g} ⊙ φ)ᵀ dy`` from ``dfinal``."""
    pid_e = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_r = tl.arange(0, R_PAD)
    r_in = offs_r < R
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_in = offs_e < E
    tile = offs_r[:, None] * E + offs_e[None, :]
    tile_in = r_in[:, None] & e_in[None, :]
    carry = tl.load(dfinal_ptr + bh * R * E + tile, mask=tile_in, other=0.0).to(tl.float32)
    for step in range(0, n_chunks):
        c = n_chunks - 1 - step
        tl.store(dnext_ptr + (bh * n_chunks + c) * R * E + tile, carry, mask=tile_in)
        offs_t = c * CHUNK + tl.arange(0, CHUNK)
        t_in = offs_t < N
        q = _rows(phi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
        dy = _rows(dy_ptr, bh, N, E, offs_t, t_in, offs_e, e_in)
        if HAS_DECAY:
            g, g_last, _ = _chunk_decay(tau_ptr, bh, N, c, offs_t, t_in, CHUNK)
            q = q * tl.exp(-g)[:, None]
            carry = carry * tl.exp(-g_last)
        carry += tl.dot(tl.trans(q), dy, input_precision=DOT_PRECISION)
    if STORE_DH0:
        tl.store(dh0_ptr + bh * R * E + tile, carry, mask=tile_in)


@triton.jit
def _scan_chunk_grads_kernel(
    phi_ptr, psi_ptr, x_ptr, tau_ptr, states_ptr, dnext_ptr, dy_ptr, dx_ptr, dphi_ptr, dpsi_ptr, dg_ptr,
    N, R, E, n_chunks, BH,
    HAS_DECAY: tl.constexpr, CHUNK: tl.constexpr, R_PAD: tl.constexpr, BLOCK_E: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One chunk on one value block: ``dx`` on its columns; its partial ``dφ``, ``dψ`` (``[NV, BH, N, R]``) and
    ``dg`` (``[NV, BH, N]``). With ``A = (φψᵀ) ⊙ M``, ``q = e^{−g} ⊙ φ``, ``k = e^{g − g_last} ⊙ ψ``, ``S`` the
    entering state and ``D = ∂L/∂S_{c+1}``::

        dA = dy xᵀ    dx = Aᵀ dy + k D    dφ = (dA ⊙ M) ψ + e^{−g} ⊙ dy Sᵀ    dψ = (dA ⊙ M)ᵀ φ + e^{g − g_last} ⊙ x Dᵀ
        dg_j += Σ_i (dA ⊙ A)_ij − Σ_i (dA ⊙ A)_ji − q_j·(dy Sᵀ)_j + k_j·(x Dᵀ)_j
        dg_last −= e^{−g_last} ⟨S, D⟩ + Σ_j k_j·(x Dᵀ)_j
    """
    c = tl.program_id(0)
    pid_e = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_local = tl.arange(0, CHUNK)
    offs_t = c * CHUNK + offs_local
    t_in = offs_t < N
    offs_r = tl.arange(0, R_PAD)
    r_in = offs_r < R
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_in = offs_e < E
    phi = _rows(phi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
    psi = _rows(psi_ptr, bh, N, R, offs_t, t_in, offs_r, r_in)
    x = _rows(x_ptr, bh, N, E, offs_t, t_in, offs_e, e_in)
    dy = _rows(dy_ptr, bh, N, E, offs_t, t_in, offs_e, e_in)
    tile = (bh * n_chunks + c) * R * E + offs_r[:, None] * E + offs_e[None, :]
    tile_in = r_in[:, None] & e_in[None, :]
    state = tl.load(states_ptr + tile, mask=tile_in, other=0.0)
    d_next = tl.load(dnext_ptr + tile, mask=tile_in, other=0.0)

    g = tl.zeros([CHUNK], tl.float32)
    if HAS_DECAY:
        g, g_last, last = _chunk_decay(tau_ptr, bh, N, c, offs_t, t_in, CHUNK)
    m = _intra_mask(g, offs_local, HAS_DECAY)
    a = tl.dot(phi, tl.trans(psi), input_precision=DOT_PRECISION) * m
    da = tl.dot(dy, tl.trans(x), input_precision=DOT_PRECISION)
    k = psi
    if HAS_DECAY:
        k = psi * tl.exp(g - g_last)[:, None]
    dx = tl.dot(tl.trans(a), dy, input_precision=DOT_PRECISION) + tl.dot(k, d_next, input_precision=DOT_PRECISION)
    tl.store(dx_ptr + (bh * N + offs_t[:, None]) * E + offs_e[None, :], dx, mask=t_in[:, None] & e_in[None, :])

    da_m = da * m
    dq = tl.dot(dy, tl.trans(state), input_precision=DOT_PRECISION)       # ∂L/∂q  [CHUNK, R_PAD]
    dk = tl.dot(x, tl.trans(d_next), input_precision=DOT_PRECISION)       # ∂L/∂k
    dphi = tl.dot(da_m, psi, input_precision=DOT_PRECISION)
    dpsi = tl.dot(tl.trans(da_m), phi, input_precision=DOT_PRECISION)
    if HAS_DECAY:
        dphi += dq * tl.exp(-g)[:, None]
        dpsi += dk * tl.exp(g - g_last)[:, None]
    else:
        dphi += dq
        dpsi += dk
    part = (pid_e * BH + bh) * N + offs_t
    tl.store(dphi_ptr + part[:, None] * R + offs_r[None, :], dphi, mask=t_in[:, None] & r_in[None, :])
    tl.store(dpsi_ptr + part[:, None] * R + offs_r[None, :], dpsi, mask=t_in[:, None] & r_in[None, :])
    if HAS_DECAY:
        z = da * a
        w = tl.sum(dk * k, axis=1)
        dg = tl.sum(z, axis=0) - tl.sum(z, axis=1) - tl.sum(dq * phi * tl.exp(-g)[:, None], axis=1) + w
        to_last = -tl.exp(-g_last) * tl.sum(tl.sum(state * d_next, axis=1), axis=0) - tl.sum(w, axis=0)
        dg = tl.where(offs_t == last, dg + to_last, dg)
        tl.store(dg_ptr + part, dg, mask=t_in)


class ScanLayout(NamedTuple):
    """Block sizes and counts of one scan: ``chunk`` positions per chunk, ``r_pad`` lanes for ``R``, ``block_e``
    value columns per program, ``n_chunks`` and ``n_value_blocks``, and the ``tl.dot`` precision."""

    chunk: int
    r_pad: int
    block_e: int
    n_chunks: int
    n_value_blocks: int
    dot_precision: str


def scan_unsupported(tensors: tuple[Tensor | None, ...]) -> list[str]:
    """What the scan kernels do not compute among these features (``φ``, ``ψ``, values, weights, initial state;
    ``τ`` may be float64): empty when they compute the call."""
    return ["float64"] if any(t is not None and t.dtype == torch.float64 for t in tensors) else []


def kernel_chunk(chunk_size: int) -> int:
    """The chunk the kernels run for a ``chunk_size`` setting: rounded up to a power of two, within
    ``[16, 64]`` (``tl.dot``'s minimum; a ``[C, C]`` block in registers)."""
    return min(MAX_CHUNK, max(MIN_DOT, _power_of_two(chunk_size)))


def _layout(phi: Tensor, psi: Tensor, x: Tensor, tau: Tensor | None, state: Tensor | None, chunk_size: int,
            block_e: int | None) -> ScanLayout:
    """Check shapes, dtypes and where the kernels run, and lay out the launch; raises as :func:`causal_scan_triton`
    documents."""
    missing = scan_unsupported((phi, psi, x, state))
    if missing:
        raise NotImplementedError(f"the triton lowrank scan does not compute {', '.join(missing)}; the 'torch' "
                                  "backend does (backend 'auto' or 'triton' through ops.integrate falls back to it)")
    check_runnable(x.device, (phi, psi, x, state))
    if phi.dim() != 4 or x.dim() != 4:
        raise ValueError(f"phi and x must be [batch, heads, n, features], got {tuple(phi.shape)}, {tuple(x.shape)}")
    B, H, N, R = phi.shape
    E = x.shape[-1]
    if tuple(psi.shape) != (B, H, N, R):
        raise ValueError(f"psi must be [{B}, {H}, {N}, {R}] like phi, got {tuple(psi.shape)}")
    if tuple(x.shape[:3]) != (B, H, N):
        raise ValueError(f"x must be [{B}, {H}, {N}, sources width], got {tuple(x.shape)}")
    if tau is not None and tuple(tau.shape) != (B, H, N):
        raise ValueError(f"tau must be [{B}, {H}, {N}], got {tuple(tau.shape)}")
    if state is not None and tuple(state.shape) != (B, H, R, E):
        raise ValueError(f"initial_state must be [{B}, {H}, {R}, {E}], got {tuple(state.shape)}")
    _check_power_of_two("chunk_size", chunk_size, MIN_DOT)
    if chunk_size > MAX_CHUNK:
        raise ValueError(f"chunk_size must be at most {MAX_CHUNK}, got {chunk_size}")
    block_e = _block_for(E, DEFAULT_BLOCK) if block_e is None else block_e
    _check_power_of_two("block_e", block_e, MIN_DOT)
    return ScanLayout(chunk_size, padded_extent(R), block_e, -(-N // chunk_size), -(-E // block_e),
                      "ieee" if x.dtype == torch.float32 else "tf32")


def _flat(t: Tensor) -> Tensor:
    """``[B, H, ...]`` as a contiguous ``[B·H, ...]`` (what the kernels index)."""
    return t.contiguous().flatten(0, 1)


class ScanForward(NamedTuple):
    """What the forward kernels give: ``y`` ``[B, H, N, E]`` (``x``'s dtype), the final state ``[B, H, R, E]``
    (the initial state's dtype, else ``x``'s) and every chunk's entering state ``[B·H, n, R, E]`` (float32, what
    the backward reads)."""

    y: Tensor
    final: Tensor
    states: Tensor


def scan_forward(phi: Tensor, psi: Tensor, x: Tensor, tau: Tensor | None, initial_state: Tensor | None, *,
                 chunk_size: int = DEFAULT_CHUNK, block_e: int | None = None) -> ScanForward:
    """The causal scan's forward kernels (no autograd; :func:`causal_scan_triton` is the differentiable form)."""
    lay = _layout(phi, psi, x, tau, initial_state, chunk_size, block_e)
    B, H, N, R = phi.shape
    E = x.shape[-1]
    phi_f, psi_f, x_f = _flat(phi), _flat(psi), _flat(x)
    tau_f = x_f if tau is None else _flat(tau)
    h0 = x_f if initial_state is None else _flat(initial_state)
    states = torch.empty(B * H, lay.n_chunks, R, E, dtype=torch.float32, device=x.device)
    final = torch.empty(B, H, R, E, dtype=x.dtype if initial_state is None else initial_state.dtype,
                        device=x.device)
    y = torch.empty(B, H, N, E, dtype=x.dtype, device=x.device)
    constants = dict(HAS_DECAY=tau is not None, CHUNK=lay.chunk, R_PAD=lay.r_pad, BLOCK_E=lay.block_e,
                     DOT_PRECISION=lay.dot_precision, num_warps=SCAN_NUM_WARPS)
    _scan_states_kernel[(lay.n_value_blocks, B * H)](
        psi_f, x_f, tau_f, h0, states, final, N, R, E, lay.n_chunks, HAS_H0=initial_state is not None, **constants)
    _scan_outputs_kernel[(lay.n_chunks, lay.n_value_blocks, B * H)](
        phi_f, psi_f, x_f, tau_f, states, y, N, R, E, lay.n_chunks, **constants)
    return ScanForward(y, final, states)


def scan_backward(phi: Tensor, psi: Tensor, x: Tensor, tau: Tensor | None, initial_state: Tensor | None,
                  states: Tensor, dy: Tensor, dfinal: Tensor, *, chunk_size: int = DEFAULT_CHUNK,
                  block_e: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(dφ, dψ, dx, dτ or None, d initial state or None)``, each in its input's dtype and shape, of
    ``Σ dy·y + Σ dfinal·final``; ``states`` is what :func:`scan_forward` returned for the same inputs."""
    lay = _layout(phi, psi, x, tau, initial_state, chunk_size, block_e)
    B, H, N, R = phi.shape
    E, BH, device = x.shape[-1], B * H, x.device
    phi_f, psi_f, x_f, dy_f = _flat(phi), _flat(psi), _flat(x), _flat(dy)
    tau_f = x_f if tau is None else _flat(tau)
    d_next = torch.empty_like(states)
    dh0 = torch.empty(BH, R, E, dtype=torch.float32, device=device) if initial_state is not None else states
    constants = dict(HAS_DECAY=tau is not None, CHUNK=lay.chunk, R_PAD=lay.r_pad, BLOCK_E=lay.block_e,
                     DOT_PRECISION=lay.dot_precision, num_warps=SCAN_NUM_WARPS)
    _scan_state_grads_kernel[(lay.n_value_blocks, BH)](
        phi_f, dy_f, tau_f, _flat(dfinal), d_next, dh0, N, R, E, lay.n_chunks,
        STORE_DH0=initial_state is not None, **constants)
    dx = torch.empty(BH, N, E, dtype=torch.float32, device=device)
    dphi, dpsi = (torch.empty(lay.n_value_blocks, BH, N, R, dtype=torch.float32, device=device) for _ in range(2))
    dg = torch.empty(lay.n_value_blocks, BH, N, dtype=torch.float32, device=device) if tau is not None else dx
    _scan_chunk_grads_kernel[(lay.n_chunks, lay.n_value_blocks, BH)](
        phi_f, psi_f, x_f, tau_f, states, d_next, dy_f, dx, dphi, dpsi, dg, N, R, E, lay.n_chunks, BH,
        **constants)
    dtau = None
    if tau is not None:  # g_i = τ_i − τ_{last of the previous chunk}: that position gets −Σ dg of the next chunk
        dg = dg.sum(0)
        per_chunk = torch.nn.functional.pad(dg, (0, lay.n_chunks * lay.chunk - N)).view(BH, lay.n_chunks, -1).sum(-1)
        dg[:, lay.chunk - 1:(lay.n_chunks - 1) * lay.chunk:lay.chunk] -= per_chunk[:, 1:]
        dtau = dg.view(B, H, N).to(tau.dtype)
    d_initial = None if initial_state is None else dh0.view(B, H, R, E).to(initial_state.dtype)
    return (dphi.sum(0).view(B, H, N, R).to(phi.dtype), dpsi.sum(0).view(B, H, N, R).to(psi.dtype),
            dx.view(B, H, N, E).to(x.dtype), dtau, d_initial)


class _TritonChunkScan(torch.autograd.Function):
    """The forward kernels, saving the inputs and the entering states; the backward kernels on the gradients."""

    @staticmethod
    def forward(ctx: FunctionCtx, settings: dict, phi: Tensor, psi: Tensor, x: Tensor, tau: Tensor | None,
                initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
        result = scan_forward(phi, psi, x, tau, initial_state, **settings)
        ctx.settings = settings
        ctx.has_tau, ctx.has_initial = tau is not None, initial_state is not None
        ctx.save_for_backward(phi, psi, x, tau, initial_state, result.states)
        return result.y, result.final

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: Tensor, dfinal: Tensor):
        phi, psi, x, tau, initial_state, states = ctx.saved_tensors
        grads = scan_backward(phi, psi, x, tau, initial_state, states, dy, dfinal, **ctx.settings)
        return (None, *grads)


def causal_scan_triton(phi: Tensor, psi: Tensor, x: Tensor, tau: Tensor | None = None,
                       initial_state: Tensor | None = None, *, chunk_size: int = DEFAULT_CHUNK,
                       block_e: int | None = None) -> tuple[Tensor, Tensor]:
    """``(y [B, H, N, E], final state [B, H, R, E])`` of the causal low-rank scan by the Triton kernels (module
    doc), differentiable in every input.

    Args:
        phi, psi: ``[B, H, N, R]`` the query and source features.
        x: ``[B, H, N, E]`` the sources (``[w v, w]`` in softmax mode: the normalizer column is one more column).
        tau: ``[B, H, N]`` cumulative decay from the start of this call (float64 kept exact), or None.
        initial_state: ``[B, H, R, E]`` the state a previous call left, or None (zeros).
        chunk_size: positions per chunk, a power of two in ``[16, 64]`` (:func:`kernel_chunk` maps a setting).
        block_e: value columns per program, a power of two ≥ 16 (None: ``E`` rounded up, at most 64).

    Raises ``NotImplementedError`` for float64 features (:func:`scan_unsupported`), ``RuntimeError`` where the
    kernels cannot run (CPU tensors without the interpreter), ``ValueError`` for bfloat16 under the interpreter,
    for shapes that do not fit and for block sizes that are not powers of two.
    """
    return _TritonChunkScan.apply({"chunk_size": chunk_size, "block_e": block_e}, phi, psi, x, tau, initial_state)
