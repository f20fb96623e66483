"""The exact integrator's backward pass in Triton, and forward + backward as one autograd function.

Three launches, as FlashAttention-2 splits its backward (no atomics, so the gradients are deterministic):

1. a preprocess, softmax mode: ``Δ_i = do_i·o_i`` per query;
2. the **source-side** kernel, one program per (source block, batch·head), walking the query blocks that can see
   its sources (the forward's block matrix transposed): ``dk, dv, db, dw, dτ_j``, and per program partial sums of
   ``dβ``, ``dw2``, ``dUa`` that torch adds up afterwards;
3. the **query-side** kernel, one program per (query block, batch·head), walking the forward's block list:
   ``dq, da, dτ_i``.

Each tile's score is recomputed as the forward computes it (:mod:`.exact_forward`'s helpers), ``P`` from the
saved log-normalizer, then (as :mod:`itnet_scale.ops.tiled` states in closed form)::

    softmax:  P = w_j exp(s + log D − lse)     ds = P (do·v − Δ)    dv += Pᵀ do    dw_j += Σ_i (P/w_j)(do·v − Δ)
    linear:   K = w_j m D s                    ds = (do·v) w_j m D  dv += Kᵀ do    dw_j += Σ_i (do·v) m D s
    dlog D = ds (softmax) or (do·v) K (linear): dτ_j = Σ_i dlog D, dτ_i = −Σ_j dlog D
    dq = β/√d · ds k,  dk = β/√d · dsᵀ q,  dβ = Σ ds (q·k)/√d
    g_ijr = ds_ij w2_r σ'(z_ijr):  da_ir = Σ_j g,  db_jr = Σ_i g,  dw2_r = Σ_ij ds σ(z),
    dUa = Σ_tiles Σ_r (Σ_j g)(p_i − c) − (Σ_i g)(p_j − c)     (c: the tile's first query position, as forward)

The kernel MLP's gradients run in ``R_CHUNK`` slices of ``r`` like its forward; the per-row ``da``/``db`` are
kept in ``[block, r]`` registers (``r`` padded to a power of two). With hidden layers, backprop through them runs
from the last down, recomputing each layer's input from ``z`` (``O(L²)`` layer evaluations per tile; no runtime
list of activations in registers), and the source side adds ``dW = Σ_pairs gradᵀ x`` and ``dc`` into its own slot
of a partial buffer. The offset table's gradient is a scatter, ``dt[h, idx_ij] += ds_ij``: the source side adds
each tile's ``ds`` into its own slot of a ``[programs, T]`` partial table by compare-and-sum over the index range
the tile's pairs reach, ``TABLE_CHUNK`` entries at a time — per-program partial histograms rather than atomics, so
the gradient stays bitwise reproducible (the cost grows with the index span of a tile: ``~2·BLOCK`` entries for
1-D positions, up to ``T`` for several position dims). Slots are read, added and stored by their one program, a
barrier between. Positions get their gradient through ``Ua``
only: ``dp_i = Σ_h da_i Ua``, ``dp_j = −Σ_h db_j Ua``, in torch afterwards. Blocks and warps are the forward's
(untuned: no GPU timing has been measured).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from itnet_scale.ops.spec import KernelInputs, KernelSpec
from itnet_scale.ops.triton.exact_forward import (
    DEFAULT_NUM_WARPS,
    ExactForward,
    _activation,
    _deep_mlp,
    _hidden_layer,
    _mlp_chunk,
    _relative_positions,
    _score_bias,
    _sigmoid,
    _table_index,
    _tile_visible,
    block_lists,
    exact_forward,
    kernel_launch,
)


@triton.jit
def _activation_slope(z, ACTIVATION: tl.constexpr):
    """``σ'(z)`` for each name of :data:`itnet_scale.ops.spec.ACTIVATIONS` (as
    :func:`itnet_scale.ops.kernel_mlp.activation_and_derivative`)."""
    if ACTIVATION == "relu":
        out = tl.where(z > 0, 1.0, 0.0)
    elif ACTIVATION == "gelu":
        out = (0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
               + z * tl.exp(-0.5 * z * z) * 0.3989422804014327)
    elif ACTIVATION == "gelu_tanh":
        t = 2.0 * _sigmoid(2.0 * 0.7978845608028654 * (z + 0.044715 * z * z * z)) - 1.0
        du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
        out = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    elif ACTIVATION == "silu":
        sg = _sigmoid(z)
        out = sg * (1.0 + z * (1.0 - sg))
    elif ACTIVATION == "sigmoid":
        sg = _sigmoid(z)
        out = sg * (1.0 - sg)
    elif ACTIVATION == "softplus":
        out = _sigmoid(z)
    else:  # tanh
        t = 2.0 * _sigmoid(2.0 * z) - 1.0
        out = 1.0 - t * t
    return out


@triton.jit
def _add_lanes(acc, chunk, lanes, chunk_lanes):
    """``acc[:, chunk_lanes] += chunk``: ``acc [M, R_PAD]``, ``chunk [M, R_CHUNK]``, ``lanes = arange(R_PAD)``;
    chunk lanes past ``R_PAD`` are dropped. (Registers cannot be indexed by a runtime offset: a compare-and-sum over
    ``M × R_PAD × R_CHUNK``, small beside the tile's ``BLOCK_Q × BLOCK_S × R_CHUNK``.)"""
    hit = lanes[:, None] == chunk_lanes[None, :]
    return acc + tl.sum(tl.where(hit[None, :, :], chunk[:, None, :], 0.0), axis=2)


@triton.jit
def _query_tiles(q_ptr, do_ptr, lse_ptr, row_dot_ptr, tau_q_ptr, b, h, bh, offs_q, q_in, offs_d, d_in, offs_e, e_in,
                 sq_b, sq_h, sq_n, sq_c, stq_b, stq_h, stq_n, Nq, e, MODE: tl.constexpr, HAS_QK: tl.constexpr,
                 HAS_DECAY: tl.constexpr, BLOCK_Q: tl.constexpr, D_PAD: tl.constexpr):
    """A query block's ``q [BLOCK_Q, D_PAD]``, ``do [BLOCK_Q, E_PAD]``, base-2 ``lse``, ``Δ`` and ``τ`` (zeros
    where absent; ``do``, ``lse``, ``Δ`` contiguous ``[B·H, Nq, ·]``)."""
    if HAS_QK:
        q_tile = tl.load(q_ptr + b * sq_b + h * sq_h + offs_q[:, None] * sq_n + offs_d[None, :] * sq_c,
                         mask=q_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
    else:
        q_tile = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
    do_tile = tl.load(do_ptr + (bh * Nq + offs_q[:, None]) * e + offs_e[None, :],
                      mask=q_in[:, None] & e_in[None, :], other=0.0).to(tl.float32)
    if MODE == "softmax":
        lse2 = tl.load(lse_ptr + bh * Nq + offs_q, mask=q_in, other=0.0) * 1.4426950408889634
        row_dot = tl.load(row_dot_ptr + bh * Nq + offs_q, mask=q_in, other=0.0)
    else:
        lse2 = tl.zeros([BLOCK_Q], tl.float32)
        row_dot = tl.zeros([BLOCK_Q], tl.float32)
    if HAS_DECAY:
        tau_q = tl.load(tau_q_ptr + b * stq_b + h * stq_h + offs_q * stq_n, mask=q_in, other=0.0)
    else:
        tau_q = tl.zeros([BLOCK_Q], tl.float32)
    return q_tile, do_tile, lse2, row_dot, tau_q


@triton.jit
def _source_tiles(k_ptr, v_ptr, w_ptr, tau_s_ptr, b, h, offs_s, s_in, offs_d, d_in, offs_e, e_in,
                  sk_b, sk_h, sk_n, sk_c, sv_b, sv_h, sv_n, sv_c, sts_b, sts_h, sts_n, sw_b, sw_h, sw_n,
                  HAS_QK: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_W: tl.constexpr, BLOCK_S: tl.constexpr,
                  D_PAD: tl.constexpr):
    """A source block's ``k [BLOCK_S, D_PAD]``, ``v [BLOCK_S, E_PAD]``, weights and ``τ`` (zeros / ones where
    absent)."""
    if HAS_QK:
        k_tile = tl.load(k_ptr + b * sk_b + h * sk_h + offs_s[:, None] * sk_n + offs_d[None, :] * sk_c,
                         mask=s_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
    else:
        k_tile = tl.zeros([BLOCK_S, D_PAD], tl.float32)
    v_tile = tl.load(v_ptr + b * sv_b + h * sv_h + offs_s[:, None] * sv_n + offs_e[None, :] * sv_c,
                     mask=s_in[:, None] & e_in[None, :], other=0.0).to(tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + b * sw_b + h * sw_h + offs_s * sw_n, mask=s_in, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_S], 1.0, tl.float32)
    if HAS_DECAY:
        tau_s = tl.load(tau_s_ptr + b * sts_b + h * sts_h + offs_s * sts_n, mask=s_in, other=0.0)
    else:
        tau_s = tl.zeros([BLOCK_S], tl.float32)
    return k_tile, v_tile, w, tau_s


@triton.jit
def _row_dot_kernel(out_ptr, do_ptr, row_dot_ptr, Nq, e, BLOCK_Q: tl.constexpr, E_PAD: tl.constexpr):
    """``Δ_i = do_i·o_i`` (softmax mode), ``out`` and ``do`` contiguous ``[B·H, Nq, e]``, ``Δ`` ``[B·H, Nq]``."""
    bh = tl.program_id(1).to(tl.int64)
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_e = tl.arange(0, E_PAD)
    inside = (offs_q < Nq)[:, None] & (offs_e < e)[None, :]
    at = (bh * Nq + offs_q[:, None]) * e + offs_e[None, :]
    o = tl.load(out_ptr + at, mask=inside, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + at, mask=inside, other=0.0).to(tl.float32)
    tl.store(row_dot_ptr + bh * Nq + offs_q, tl.sum(o * do, axis=1), mask=offs_q < Nq)


@triton.jit
def _deep_mlp_backward(z, ds, w2, mlp_w_ptr, mlp_c_ptr, dmlp_w_ptr, dmlp_c_ptr, slot, n_hidden, h, H, r, lanes_r,
                       ACCUMULATE: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_Q: tl.constexpr,
                       BLOCK_S: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``g = ∂(Σ ds·s)/∂z`` through a kernel MLP with ``n_hidden`` hidden layers, from the first layer's
    pre-activations ``z [BLOCK_Q, BLOCK_S, R_PAD]``. Backprop runs from the last hidden layer down, recomputing
    each layer's input from ``z`` (``O(L²)`` layer evaluations per tile, no list of activations in registers). With
    ``ACCUMULATE``, each layer's ``dW = Σ_pairs gradᵀ x`` and ``dc`` are added into this program's own slot of the
    partial buffers ``[programs, L, r, r]``, ``[programs, L, r]`` (read, add, store: no other program touches the
    slot, and a barrier orders the next tile's read after this store)."""
    grad = ds[:, :, None] * w2[None, None, :]
    r_in = lanes_r < r
    for step in range(0, n_hidden):
        layer = n_hidden - 1 - step
        x = _activation(z, ACTIVATION)
        for below in range(0, layer):
            pre, _ = _hidden_layer(x, mlp_w_ptr, mlp_c_ptr, below, h, H, r, lanes_r, BLOCK_Q, BLOCK_S, R_PAD,
                                   DOT_PRECISION)
            x = _activation(pre, ACTIVATION)
        pre, weight = _hidden_layer(x, mlp_w_ptr, mlp_c_ptr, layer, h, H, r, lanes_r, BLOCK_Q, BLOCK_S, R_PAD,
                                    DOT_PRECISION)
        grad_pre = tl.reshape(grad * _activation_slope(pre, ACTIVATION), [BLOCK_Q * BLOCK_S, R_PAD])
        if ACCUMULATE:
            at = slot * n_hidden + layer
            dw_ptrs = dmlp_w_ptr + (at * r + lanes_r[:, None]) * r + lanes_r[None, :]
            both = r_in[:, None] & r_in[None, :]
            dw = tl.dot(tl.trans(grad_pre), tl.reshape(x, [BLOCK_Q * BLOCK_S, R_PAD]), input_precision=DOT_PRECISION)
            tl.store(dw_ptrs, tl.load(dw_ptrs, mask=both, other=0.0) + dw, mask=both)
            dc_ptrs = dmlp_c_ptr + at * r + lanes_r
            tl.store(dc_ptrs, tl.load(dc_ptrs, mask=r_in, other=0.0) + tl.sum(grad_pre, axis=0), mask=r_in)
            tl.debug_barrier()
        grad = tl.reshape(tl.dot(grad_pre, weight, input_precision=DOT_PRECISION), [BLOCK_Q, BLOCK_S, R_PAD])
    return grad * _activation_slope(z, ACTIVATION)


@triton.jit
def _mlp_accumulate(acc_a, acc_b, acc_w2, acc_ua, g, ds, last, offs_r, lanes_r, lanes_p, pos_q_ptr, pos_s_ptr, b,
                    q_start, offs_q, q_in, offs_s, s_in, spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, P,
                    SIDE: tl.constexpr, HAS_POS: tl.constexpr):
    """Add one tile's kernel-MLP gradients on lanes ``offs_r`` (``g = ∂/∂z``, ``last`` the last layer's
    activations, ``[BLOCK_Q, BLOCK_S, lanes]``): ``da`` (query side); ``db``, ``dw2``, ``dUa`` (source side)."""
    if SIDE == "query":
        acc_a = _add_lanes(acc_a, tl.sum(g, axis=1), lanes_r, offs_r)
    else:
        g_s = tl.sum(g, axis=0)  # [BLOCK_S, lanes]
        acc_b = _add_lanes(acc_b, g_s, lanes_r, offs_r)
        dw2 = tl.sum(tl.sum(ds[:, :, None] * last, axis=0), axis=0)
        acc_w2 = tl.sum(_add_lanes(acc_w2[None, :], dw2[None, :], lanes_r, offs_r), axis=0)
        if HAS_POS:
            g_q = tl.sum(g, axis=1)  # [BLOCK_Q, lanes]
            for k in range(0, P):
                rel_q, rel_s = _relative_positions(pos_q_ptr, pos_s_ptr, b, q_start, offs_q, q_in, offs_s, s_in, k,
                                                   spq_b, spq_n, spq_c, sps_b, sps_n, sps_c)
                dua = tl.sum(g_q * rel_q[:, None], axis=0) - tl.sum(g_s * rel_s[:, None], axis=0)
                dua_lanes = _add_lanes(tl.zeros_like(acc_w2)[None, :], dua[None, :], lanes_r, offs_r)
                acc_ua += tl.where(lanes_p[None, :] == k, tl.trans(dua_lanes), 0.0)
    return acc_a, acc_b, acc_w2, acc_ua


@triton.jit
def _table_scatter(dtable_ptr, slot, T, ds, idx, counted, TABLE_CHUNK: tl.constexpr):
    """Add one tile's ``ds`` into this program's partial table gradient ``[programs, T]`` by index: a
    compare-and-sum over ``TABLE_CHUNK`` table entries at a time, walking only the index range the tile's counted
    pairs reach (read, add, store into the program's own slot; a barrier orders the next read after the store)."""
    lowest = tl.min(tl.min(tl.where(counted, idx, T), axis=1), axis=0)
    highest = tl.max(tl.max(tl.where(counted, idx, -1), axis=1), axis=0)
    for t0 in range(lowest, highest + 1, TABLE_CHUNK):
        entries = t0 + tl.arange(0, TABLE_CHUNK)
        hit = (idx[:, :, None] == entries[None, None, :]) & counted[:, :, None]
        part = tl.sum(tl.sum(tl.where(hit, ds[:, :, None], 0.0), axis=0), axis=0)
        ptrs = dtable_ptr + slot * T + entries
        tl.store(ptrs, tl.load(ptrs, mask=entries < T, other=0.0) + part, mask=entries < T)
        tl.debug_barrier()


@triton.jit
def _exact_backward_kernel(
    q_ptr, k_ptr, beta_ptr, a_ptr, b_ptr, ua_ptr, w2_ptr, v_ptr, pos_q_ptr, pos_s_ptr, tau_q_ptr, tau_s_ptr,
    w_ptr, pad_ptr, mlp_w_ptr, mlp_c_ptr, table_ptr, ranges_ptr, mask_ptr,
    block_count_ptr, block_list_ptr, block_list_stride, do_ptr, lse_ptr, row_dot_ptr,
    dq_ptr, da_ptr, dtau_q_ptr, dk_ptr, dv_ptr, db_ptr, dw_ptr, dtau_s_ptr, dbeta_ptr, dw2_ptr, dua_ptr,
    dmlp_w_ptr, dmlp_c_ptr, dtable_ptr,
    sq_b, sq_h, sq_n, sq_c, sk_b, sk_h, sk_n, sk_c, sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c,
    sv_b, sv_h, sv_n, sv_c, spq_b, spq_n, spq_c, sps_b, sps_n, sps_c,
    stq_b, stq_h, stq_n, sts_b, sts_h, sts_n, sw_b, sw_h, sw_n, spad_b, spad_n, sm_b, sm_h, sm_q, sm_s,
    H, Nq, Ns, d, e, r, P, inv_sqrt_d, support_limit, n_hidden, T,
    SIDE: tl.constexpr, MODE: tl.constexpr, SUPPORT: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_QK: tl.constexpr, HAS_MLP: tl.constexpr, HAS_POS: tl.constexpr, HAS_DECAY: tl.constexpr,
    HAS_W: tl.constexpr, HAS_PAD: tl.constexpr, DEEP: tl.constexpr, HAS_TABLE: tl.constexpr, MASK: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, D_PAD: tl.constexpr, E_PAD: tl.constexpr,
    R_CHUNK: tl.constexpr, R_PAD: tl.constexpr, P_PAD: tl.constexpr, TABLE_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``SIDE = "query"``: program (query block, b·h) → ``dq, da, dτ_i``; ``SIDE = "source"``: program (source
    block, b·h) → ``dk, dv, db, dw, dτ_j`` and its partial ``dβ, dw2, dUa``, hidden layers' ``dW, dc`` and table
    gradient. Outputs are contiguous float32 ``[B·H, N, ·]``; partials ``[source blocks, B·H, ·]``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, D_PAD)
    d_in = offs_d < d
    offs_e = tl.arange(0, E_PAD)
    e_in = offs_e < e
    offs_rc = tl.arange(0, R_CHUNK)
    lanes_r = tl.arange(0, R_PAD)
    lanes_p = tl.arange(0, P_PAD)
    slot = pid * tl.num_programs(1) + bh  # this program's own partial sums: no atomics
    qk_scale = 0.0
    if HAS_QK:
        qk_scale = tl.load(beta_ptr + h).to(tl.float32) * inv_sqrt_d

    if SIDE == "query":
        q_start = pid * BLOCK_Q
        offs_q = q_start + tl.arange(0, BLOCK_Q)
        q_in = offs_q < Nq
        q_tile, do_tile, lse2, row_dot, tau_q = _query_tiles(
            q_ptr, do_ptr, lse_ptr, row_dot_ptr, tau_q_ptr, b, h, bh, offs_q, q_in, offs_d, d_in, offs_e, e_in,
            sq_b, sq_h, sq_n, sq_c, stq_b, stq_h, stq_n, Nq, e, MODE, HAS_QK, HAS_DECAY, BLOCK_Q, D_PAD)
        acc_q = tl.zeros([BLOCK_Q, D_PAD], tl.float32)
        acc_tau = tl.zeros([BLOCK_Q], tl.float32)
    else:
        offs_s = pid * BLOCK_S + tl.arange(0, BLOCK_S)
        s_in = offs_s < Ns
        k_tile, v_tile, w, tau_s = _source_tiles(
            k_ptr, v_ptr, w_ptr, tau_s_ptr, b, h, offs_s, s_in, offs_d, d_in, offs_e, e_in, sk_b, sk_h, sk_n, sk_c,
            sv_b, sv_h, sv_n, sv_c, sts_b, sts_h, sts_n, sw_b, sw_h, sw_n, HAS_QK, HAS_DECAY, HAS_W, BLOCK_S, D_PAD)
        acc_k = tl.zeros([BLOCK_S, D_PAD], tl.float32)
        acc_v = tl.zeros([BLOCK_S, E_PAD], tl.float32)
        acc_w = tl.zeros([BLOCK_S], tl.float32)
        acc_tau = tl.zeros([BLOCK_S], tl.float32)
        acc_beta = tl.zeros([BLOCK_S], tl.float32)
    acc_a = tl.zeros([BLOCK_Q, R_PAD], tl.float32)  # the kernel MLP's, both sides (each uses its own)
    acc_b = tl.zeros([BLOCK_S, R_PAD], tl.float32)
    acc_w2 = tl.zeros([R_PAD], tl.float32)
    acc_ua = tl.zeros([R_PAD, P_PAD], tl.float32)

    n_blocks = tl.load(block_count_ptr + pid)
    for t in range(0, n_blocks):
        other = tl.load(block_list_ptr + pid * block_list_stride + t)
        if SIDE == "query":
            offs_s = other * BLOCK_S + tl.arange(0, BLOCK_S)
            s_in = offs_s < Ns
            k_tile, v_tile, w, tau_s = _source_tiles(
                k_ptr, v_ptr, w_ptr, tau_s_ptr, b, h, offs_s, s_in, offs_d, d_in, offs_e, e_in,
                sk_b, sk_h, sk_n, sk_c, sv_b, sv_h, sv_n, sv_c, sts_b, sts_h, sts_n, sw_b, sw_h, sw_n,
                HAS_QK, HAS_DECAY, HAS_W, BLOCK_S, D_PAD)
        else:
            q_start = other * BLOCK_Q
            offs_q = q_start + tl.arange(0, BLOCK_Q)
            q_in = offs_q < Nq
            q_tile, do_tile, lse2, row_dot, tau_q = _query_tiles(
                q_ptr, do_ptr, lse_ptr, row_dot_ptr, tau_q_ptr, b, h, bh, offs_q, q_in, offs_d, d_in, offs_e,
                e_in, sq_b, sq_h, sq_n, sq_c, stq_b, stq_h, stq_n, Nq, e, MODE, HAS_QK, HAS_DECAY, BLOCK_Q, D_PAD)
        visible = _tile_visible(pos_q_ptr, pos_s_ptr, pad_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, spq_b,
                                spq_n, spq_c, sps_b, sps_n, sps_c, spad_b, spad_n, sm_b, sm_h, sm_q, sm_s, P,
                                support_limit, SUPPORT, HAS_PAD, MASK, BLOCK_Q, BLOCK_S)

        # the score s(i, j), recomputed as the forward computes it
        s = tl.zeros([BLOCK_Q, BLOCK_S], tl.float32)
        idx, inside = tl.zeros([BLOCK_Q, BLOCK_S], tl.int32), visible
        if HAS_TABLE:
            idx, inside = _table_index(pos_q_ptr, pos_s_ptr, ranges_ptr, b, offs_q, q_in, offs_s, s_in, spq_b,
                                       spq_n, spq_c, sps_b, sps_n, sps_c, P, BLOCK_Q, BLOCK_S)
        if HAS_TABLE or MASK == "float":
            s += _score_bias(table_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, idx, inside & visible, T,
                             sm_b, sm_h, sm_q, sm_s, HAS_TABLE, MASK, BLOCK_Q, BLOCK_S)
        if HAS_QK:
            qk = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION)
            s += qk * qk_scale
        if HAS_MLP and DEEP:
            z, w2 = _mlp_chunk(a_ptr, b_ptr, ua_ptr, w2_ptr, pos_q_ptr, pos_s_ptr, b, h, q_start, offs_q, q_in,
                               offs_s, s_in, lanes_r, lanes_r < r, sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c,
                               spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, r, P, HAS_POS)
            last = _deep_mlp(z, mlp_w_ptr, mlp_c_ptr, n_hidden, h, H, r, lanes_r, ACTIVATION, BLOCK_Q, BLOCK_S,
                             R_PAD, DOT_PRECISION)
            s += tl.sum(last * w2[None, None, :], axis=2)
        elif HAS_MLP:
            for r0 in range(0, r, R_CHUNK):
                offs_r = r0 + offs_rc
                z, w2 = _mlp_chunk(a_ptr, b_ptr, ua_ptr, w2_ptr, pos_q_ptr, pos_s_ptr, b, h, q_start, offs_q, q_in,
                                   offs_s, s_in, offs_r, offs_r < r, sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c,
                                   spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, r, P, HAS_POS)
                s += tl.sum(_activation(z, ACTIVATION) * w2[None, None, :], axis=2)

        # P (or K) and the score gradient ds
        dpk = tl.dot(do_tile, tl.trans(v_tile), input_precision=DOT_PRECISION)  # dP (softmax) or dK (linear)
        if HAS_DECAY:
            log_d = tl.where(visible, (tau_s[None, :] - tau_q[:, None]).to(tl.float32), 0.0)
        if MODE == "softmax":
            logits = s
            if HAS_DECAY:
                logits += log_d
            logits = tl.where(visible, logits * 1.4426950408889634, float("-inf"))
            p_free = tl.exp2(logits - lse2[:, None])  # without w_j; 0 where lse = +inf (a query seeing nothing)
            spread = dpk - row_dot[:, None]
            kmat = p_free * w[None, :]
            ds = kmat * spread
            dlog_d = ds
            dw_terms = p_free * spread
        else:
            factor = tl.where(visible, 1.0, 0.0)
            if HAS_DECAY:
                factor = factor * tl.exp(log_d)
            dw_terms = dpk * s * factor
            factor = factor * w[None, :]
            kmat = s * factor
            ds = dpk * factor
            dlog_d = dpk * kmat

        if SIDE == "query":
            if HAS_QK:
                acc_q += tl.dot(ds, k_tile, input_precision=DOT_PRECISION) * qk_scale
            acc_tau -= tl.sum(dlog_d, axis=1)
        else:
            acc_v += tl.dot(tl.trans(kmat), do_tile, input_precision=DOT_PRECISION)
            if HAS_QK:
                acc_k += tl.dot(tl.trans(ds), q_tile, input_precision=DOT_PRECISION) * qk_scale
                acc_beta += tl.sum(ds * qk, axis=0)
            acc_w += tl.sum(dw_terms, axis=0)
            acc_tau += tl.sum(dlog_d, axis=0)
            if HAS_TABLE:
                _table_scatter(dtable_ptr, slot, T, ds, idx, inside & visible, TABLE_CHUNK)
        if HAS_MLP and DEEP:
            g = _deep_mlp_backward(z, ds, w2, mlp_w_ptr, mlp_c_ptr, dmlp_w_ptr, dmlp_c_ptr, slot, n_hidden, h, H, r,
                                   lanes_r, SIDE == "source", ACTIVATION, BLOCK_Q, BLOCK_S, R_PAD, DOT_PRECISION)
            acc_a, acc_b, acc_w2, acc_ua = _mlp_accumulate(
                acc_a, acc_b, acc_w2, acc_ua, g, ds, last, lanes_r, lanes_r, lanes_p, pos_q_ptr, pos_s_ptr, b,
                q_start, offs_q, q_in, offs_s, s_in, spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, P, SIDE, HAS_POS)
        elif HAS_MLP:
            for r0 in range(0, r, R_CHUNK):
                offs_r = r0 + offs_rc
                z, w2 = _mlp_chunk(a_ptr, b_ptr, ua_ptr, w2_ptr, pos_q_ptr, pos_s_ptr, b, h, q_start, offs_q, q_in,
                                   offs_s, s_in, offs_r, offs_r < r, sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c,
                                   spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, r, P, HAS_POS)
                g = ds[:, :, None] * w2[None, None, :] * _activation_slope(z, ACTIVATION)
                acc_a, acc_b, acc_w2, acc_ua = _mlp_accumulate(
                    acc_a, acc_b, acc_w2, acc_ua, g, ds, _activation(z, ACTIVATION), offs_r, lanes_r, lanes_p,
                    pos_q_ptr, pos_s_ptr, b, q_start, offs_q, q_in, offs_s, s_in, spq_b, spq_n, spq_c, sps_b, sps_n,
                    sps_c, P, SIDE, HAS_POS)

    r_lanes = lanes_r < r
    if SIDE == "query":
        if HAS_QK:
            tl.store(dq_ptr + (bh * Nq + offs_q[:, None]) * d + offs_d[None, :], acc_q,
                     mask=q_in[:, None] & d_in[None, :])
        if HAS_MLP:
            tl.store(da_ptr + (bh * Nq + offs_q[:, None]) * r + lanes_r[None, :], acc_a,
                     mask=q_in[:, None] & r_lanes[None, :])
        if HAS_DECAY:
            tl.store(dtau_q_ptr + bh * Nq + offs_q, acc_tau, mask=q_in)
    else:
        tl.store(dv_ptr + (bh * Ns + offs_s[:, None]) * e + offs_e[None, :], acc_v,
                 mask=s_in[:, None] & e_in[None, :])
        if HAS_QK:
            tl.store(dk_ptr + (bh * Ns + offs_s[:, None]) * d + offs_d[None, :], acc_k,
                     mask=s_in[:, None] & d_in[None, :])
            tl.store(dbeta_ptr + slot, tl.sum(acc_beta, axis=0) * inv_sqrt_d)
        if HAS_W:
            tl.store(dw_ptr + bh * Ns + offs_s, acc_w, mask=s_in)
        if HAS_DECAY:
            tl.store(dtau_s_ptr + bh * Ns + offs_s, acc_tau, mask=s_in)
        if HAS_MLP:
            tl.store(db_ptr + (bh * Ns + offs_s[:, None]) * r + lanes_r[None, :], acc_b,
                     mask=s_in[:, None] & r_lanes[None, :])
            tl.store(dw2_ptr + slot * r + lanes_r, acc_w2, mask=r_lanes)
            if HAS_POS:
                tl.store(dua_ptr + (slot * r + lanes_r[:, None]) * P + lanes_p[None, :], acc_ua,
                         mask=r_lanes[:, None] & (lanes_p < P)[None, :])


def _power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


TABLE_CHUNK = 16  # table entries compared at once when the source side adds a tile's ds into the table's gradient


def exact_backward(
    inp: KernelInputs,
    spec: KernelSpec,
    forward: ExactForward,
    dout: Tensor,
    *,
    block_size: tuple[int, int] | None = None,
    r_chunk: int | None = None,
) -> dict[str, Tensor]:
    """The gradients of ``Σ_ij dout_i · out_i`` with respect to every present input of the call (see the module
    doc), by input name (``KernelInputs`` fields; positions only with ``pos_weight``), each in its input's dtype
    and shape. ``forward`` is what :func:`~itnet_scale.ops.triton.exact_forward` returned for the same inputs and
    settings; ``dout`` is ``[B, H, Nq, e]``. Raises as :func:`~itnet_scale.ops.triton.exact_forward` does."""
    launch = kernel_launch(inp, spec, block_size, r_chunk)
    B, H, Nq, Ns, e = inp.shape
    BH, device = B * H, inp.v.device
    d, r, P, n_hidden, T = (launch.scalars[i] for i in (3, 5, 6, 9, 10))
    n_query_blocks, n_source_blocks = launch.visible.shape
    dout = dout.contiguous()

    def buffer(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=torch.float32, device=device)

    lse = row_dot = inp.v  # linear mode: no normalizer (the kernels do not read these)
    if spec.mode == "softmax":
        lse, row_dot = forward.lse, buffer(BH, Nq)
        _row_dot_kernel[(n_query_blocks, BH)](forward.out.contiguous(), dout, row_dot, Nq, e,
                                               BLOCK_Q=launch.block_q, E_PAD=launch.constants["E_PAD"])
    dq, da, dtau_q = buffer(BH, Nq, d), buffer(BH, Nq, r), buffer(BH, Nq)
    dk, dv, db, dw, dtau_s = buffer(BH, Ns, d), buffer(BH, Ns, e), buffer(BH, Ns, r), buffer(BH, Ns), buffer(BH, Ns)
    dbeta, dw2, dua = buffer(n_source_blocks, BH), buffer(n_source_blocks, BH, r), buffer(n_source_blocks, BH, r, P)
    slots = n_source_blocks * BH
    dmlp_w, dmlp_c, dtable = buffer(slots, n_hidden, r, r), buffer(slots, n_hidden, r), buffer(slots, T)
    constants = dict(launch.constants, P_PAD=_power_of_two(P), TABLE_CHUNK=TABLE_CHUNK)
    for side, visible in (("source", launch.visible.T), ("query", launch.visible)):
        block_count, block_list = block_lists(visible)
        _exact_backward_kernel[(visible.shape[0], BH)](
            *launch.pointers, block_count, block_list, block_list.stride(0), dout, lse, row_dot,
            dq, da, dtau_q, dk, dv, db, dw, dtau_s, dbeta, dw2, dua, dmlp_w, dmlp_c, dtable,
            *launch.strides, *launch.scalars,
            SIDE=side, **constants, num_warps=DEFAULT_NUM_WARPS,
        )

    grads = {"v": dv.view(B, H, Ns, e)}
    if inp.q is not None:
        grads.update(q=dq.view(B, H, Nq, d), k=dk.view(B, H, Ns, d), beta=dbeta.sum(0).view(B, H).sum(0))
    if inp.a is not None:
        grads.update(a=da.view(B, H, Nq, r), b=db.view(B, H, Ns, r), w2=dw2.sum(0).view(B, H, r).sum(0))
    if inp.pos_weight is not None:
        ua = inp.pos_weight.float()
        grads.update(pos_weight=dua.sum(0).view(B, H, r, P).sum(0),
                     pos_q=torch.einsum("bhnr,hrp->bnp", grads["a"], ua),
                     pos_s=-torch.einsum("bhnr,hrp->bnp", grads["b"], ua))
    if n_hidden:
        grads.update(mlp_w=dmlp_w.view(n_source_blocks, B, H, n_hidden, r, r).sum((0, 1)).transpose(0, 1),
                     mlp_c=dmlp_c.view(n_source_blocks, B, H, n_hidden, r).sum((0, 1)).transpose(0, 1))
    if inp.table is not None:
        grads["table"] = dtable.view(n_source_blocks, B, H, T).sum((0, 1))
    if inp.tau_q is not None:
        grads.update(tau_q=dtau_q.view(B, H, Nq), tau_s=dtau_s.view(B, H, Ns))
    if inp.weights is not None:
        dw = dw.view(B, H, Ns)
        grads["weights"] = dw.sum(1) if inp.weights.dim() == 2 else dw
    return {name: g.to(getattr(inp, name).dtype).reshape(getattr(inp, name).shape) for name, g in grads.items()}


class _TritonIntegralTransform(torch.autograd.Function):
    """The forward kernel, saving only its output and log-normalizer; the backward kernels on the gradient."""

    @staticmethod
    def forward(ctx, spec: KernelSpec, settings: dict, names: tuple[str, ...], *tensors: Tensor) -> Tensor:
        inp = KernelInputs(**dict(zip(names, tensors)))
        result = exact_forward(inp, spec, **settings)
        ctx.spec, ctx.settings, ctx.names = spec, settings, names
        ctx.present = [t is not None for t in tensors]
        ctx.save_for_backward(*[t for t in tensors if t is not None], result.out,
                              *([] if result.lse is None else [result.lse]))
        return result.out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        saved = list(ctx.saved_tensors)
        n_inputs = sum(ctx.present)
        it = iter(saved[:n_inputs])
        tensors = [next(it) if p else None for p in ctx.present]
        out = saved[n_inputs]
        lse = saved[n_inputs + 1] if len(saved) > n_inputs + 1 else None
        inp = KernelInputs(**dict(zip(ctx.names, tensors)))
        grads = exact_backward(inp, ctx.spec, ExactForward(out, lse), dout, **ctx.settings)
        return (None, None, None, *[grads.get(n) if needed else None
                                    for n, needed in zip(ctx.names, ctx.needs_input_grad[3:])])


def integral_transform_triton(
    inp: KernelInputs,
    spec: KernelSpec,
    *,
    block_size: tuple[int, int] | None = None,
    r_chunk: int | None = None,
) -> Tensor:
    """``Σ_j K(i,j) v_j`` (``[B, H, Nq, e]``) by the Triton kernels, differentiable in every input that
    :func:`exact_backward` names; settings and errors as :func:`~itnet_scale.ops.triton.exact_forward`."""
    names = tuple(inp.names())
    settings = {"block_size": block_size, "r_chunk": r_chunk}
    return _TritonIntegralTransform.apply(spec, settings, names, *inp.tensors())
