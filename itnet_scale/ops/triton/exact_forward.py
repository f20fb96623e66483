"""The exact integrator's forward pass as one fused Triton kernel: one launch, every tile in registers.

One program per (query block, batch·head). It walks the source blocks its query block can see — a per-query-block
list built on the host from the blocks' position boxes (:func:`itnet_scale.ops.tiled.visible_blocks`), in the style
of FlexAttention's BlockMask — and per tile computes what :mod:`itnet_scale.ops.tiled` computes::

    s_ij = β/√d · q_i·k_j + Σ_r w2_r σ(a'_ir + b'_jr)      a' = a + Ua (p_i − c),  b' = b − Ua (p_j − c)
    m_ij = support(p_i, p_j) ∧ ¬padding_j                   log D_ij = −(τ_i − τ_j)   (τ loaded as stored, e.g.
                                                                                         float64; the difference cast)
    softmax: online max and normalizer in base 2 (exp2), acc += (w_j · exp(s + log D − max)) v_j
    linear:  acc += (w_j m_ij D_ij s_ij) v_j

with ``c`` the block's first query position (shifted positions as small as the offsets within a tile). The kernel
MLP runs in ``R_CHUNK`` slices of ``r``, so a 64 × 64 tile's ``[BLOCK_Q, BLOCK_S, R_CHUNK]`` pre-activations fit in
registers on a GPU. A query that sees no source (or only zero weights) gets zeros and ``lse = +inf``. Inputs are
upcast to float32 after loading; ``d`` and ``e`` (the ``tl.dot`` dims) are padded to at least 16 lanes with masks,
``r`` lanes are masked at ``r``.

Covered (and by the backward kernels, :mod:`.exact_backward`): both modes, the five supports, padding, source
weights (shared or per head), decay, the bilinear term, the kernel MLP with its position term, any position dim;
float32 / bfloat16 / float16 inputs, and:

* a bool ``attn_mask`` (``[Nq, Ns]``, or ``[B, H, Nq, Ns]`` with any strides), loaded per tile with masked
  pointers into ``m``; source blocks it hides for every batch and head are also taken off the block lists;
* a float ``attn_mask`` that needs no gradient, added to the score like the table;
* hidden layers (``mlp_w``, ``mlp_c``): a runtime loop over them, each a ``tl.dot`` of the flattened
  ``[BLOCK_Q·BLOCK_S, r]`` activations with ``Wᵀ`` (``r`` padded to 16 lanes or more); they mix the kernel lanes, so
  the whole width is evaluated at once (no ``R_CHUNK`` slicing) in smaller default blocks (``DEEP_BLOCK``);
* the offset table: each pair's offset rounded (ties to even, as ``torch.round``), its row-major index and a
  gathered load of ``t_h[idx]`` (0 outside ``±R``).

Not covered (:func:`unsupported_features` names them; the exact integrator's dispatch then runs ``torch``): the
gradient of a float ``attn_mask`` (a dense ``[B, H, Nq, Ns]`` output), float64.

Block sizes are powers of two (≥ 16, the GPU's ``tl.dot`` minimum). The defaults — ``BLOCK_Q = BLOCK_S = min(64,
N rounded up)``, ``R_CHUNK = 2``, 8 warps — are the largest 64 × 64 configuration that Triton 3.9 compiled for
sm_90 without spilling registers at ``d = e = 64`` (194 registers; ``R_CHUNK = 4`` took 244, 4 warps spilled);
for sm_80 the same configuration spills a little. No GPU timing has been measured yet. Autotune candidates,
untuned, to measure before any replaces the default::

    Hopper (H100/H200): (BLOCK_Q, BLOCK_S, R_CHUNK, num_warps) in
        (64, 64, 2, 8), (64, 64, 4, 8), (64, 32, 2, 4), (128, 64, 1, 8)
    Ampere (A100):      (64, 32, 2, 8), (32, 64, 2, 4), (64, 64, 1, 8)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from itnet_scale.ops.spec import KernelInputs, KernelSpec
from itnet_scale.ops.tiled import visible_blocks

MIN_DOT = 16  # tl.dot's smallest extent on a GPU; the interpreter does not enforce it, the wrapper does
DEFAULT_BLOCK = 64
DEFAULT_R_CHUNK = 2
DEFAULT_NUM_WARPS = 8
DEEP_BLOCK = 32  # a kernel MLP with hidden layers keeps [BLOCK_Q, BLOCK_S, r] per layer alive: smaller tiles
#: The inputs whose dtype is the computation's (positions and τ may be float64 whatever it is; a bool attn_mask has
#: none).
_FEATURES = ("q", "k", "beta", "v", "a", "b", "pos_weight", "w2", "mlp_w", "mlp_c", "table", "weights", "attn_mask")


@triton.jit
def _sigmoid(z):
    """``1 / (1 + e^−z)`` from ``e^−|z|``: no overflow, full precision for negative ``z``."""
    small = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0, small) / (1.0 + small)


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    """``σ(z)`` for each name of :data:`itnet_scale.ops.spec.ACTIVATIONS` (tanh through the sigmoid: Triton's
    language has no tanh that runs both compiled and interpreted)."""
    if ACTIVATION == "relu":
        out = tl.maximum(z, 0.0)
    elif ACTIVATION == "gelu":
        out = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        out = z * _sigmoid(2.0 * u)  # 0.5 z (1 + tanh u) = z σ(2u)
    elif ACTIVATION == "silu":
        out = z * _sigmoid(z)
    elif ACTIVATION == "sigmoid":
        out = _sigmoid(z)
    elif ACTIVATION == "softplus":  # torch's: z past its threshold of 20, else log(1 + e^z) in a stable form
        out = tl.where(z > 20.0, z, tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))))
    else:  # tanh
        out = 2.0 * _sigmoid(2.0 * z) - 1.0
    return out


@triton.jit
def _tile_visible(
    pos_q_ptr, pos_s_ptr, pad_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, spq_b, spq_n, spq_c, sps_b, sps_n,
    sps_c, spad_b, spad_n, sm_b, sm_h, sm_q, sm_s, P, support_limit, SUPPORT: tl.constexpr, HAS_PAD: tl.constexpr,
    MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """``m(i, j)`` of a tile ``[BLOCK_Q, BLOCK_S]``: inside both extents, the support (from positions), not
    padding, and where a bool ``attn_mask`` allows it (``MASK = "bool"``; a 2-D mask has batch and head strides
    0)."""
    visible = q_in[:, None] & s_in[None, :]
    if SUPPORT == "causal" or SUPPORT == "causal_window":
        lag = (tl.load(pos_q_ptr + b * spq_b + offs_q * spq_n, mask=q_in, other=0.0)[:, None]
               - tl.load(pos_s_ptr + b * sps_b + offs_s * sps_n, mask=s_in, other=0.0)[None, :])
        visible = visible & (lag >= 0)
        if SUPPORT == "causal_window":
            visible = visible & (lag <= support_limit)
    elif SUPPORT == "window" or SUPPORT == "radius":
        reach = tl.zeros([BLOCK_Q, BLOCK_S], tl.float32)
        for k in range(0, P):
            delta = (tl.load(pos_q_ptr + b * spq_b + offs_q * spq_n + k * spq_c, mask=q_in, other=0.0)[:, None]
                     - tl.load(pos_s_ptr + b * sps_b + offs_s * sps_n + k * sps_c, mask=s_in, other=0.0)[None, :])
            if SUPPORT == "window":
                reach = tl.maximum(reach, tl.abs(delta).to(tl.float32))
            else:
                reach += (delta * delta).to(tl.float32)
        visible = visible & (reach <= support_limit)
    if HAS_PAD:
        padded = tl.load(pad_ptr + b * spad_b + offs_s * spad_n, mask=s_in, other=1)
        visible = visible & (padded == 0)[None, :]
    if MASK == "bool":
        allowed = tl.load(mask_ptr + b * sm_b + h * sm_h + offs_q[:, None] * sm_q + offs_s[None, :] * sm_s,
                          mask=q_in[:, None] & s_in[None, :], other=0)
        visible = visible & (allowed != 0)
    return visible


@triton.jit
def _round_half_even(x):
    """``torch.round``: to the nearest integer, ties to even (as :func:`itnet_scale.ops.spec.table_index`)."""
    low = tl.floor(x)
    frac = x - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) != 0
    return low + tl.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)


@triton.jit
def _table_index(pos_q_ptr, pos_s_ptr, ranges_ptr, b, offs_q, q_in, offs_s, s_in, spq_b, spq_n, spq_c, sps_b, sps_n,
                 sps_c, P, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    """The offset table's flat index of each pair of a tile and whether its offset lies inside the table
    (``[BLOCK_Q, BLOCK_S]`` each), as :func:`itnet_scale.ops.spec.table_index`: offsets rounded in the positions'
    dtype, row-major over ``δ_k + R_k``."""
    idx = tl.zeros([BLOCK_Q, BLOCK_S], tl.int32)
    inside = q_in[:, None] & s_in[None, :]
    for k in range(0, P):
        delta = (tl.load(pos_q_ptr + b * spq_b + offs_q * spq_n + k * spq_c, mask=q_in, other=0.0)[:, None]
                 - tl.load(pos_s_ptr + b * sps_b + offs_s * sps_n + k * sps_c, mask=s_in, other=0.0)[None, :])
        reach = tl.load(ranges_ptr + k)
        lag = tl.minimum(tl.maximum(_round_half_even(delta), -1e9), 1e9).to(tl.int32)  # finite before the cast
        inside = inside & (lag <= reach) & (lag >= -reach)
        idx = idx * (2 * reach + 1) + (tl.minimum(tl.maximum(lag, -reach), reach) + reach)
    return idx, inside


@triton.jit
def _score_bias(table_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, idx, inside, T, sm_b, sm_h, sm_q, sm_s,
                HAS_TABLE: tl.constexpr, MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    """The score terms that are not products: the offset table ``t_h(δ_ij)`` (0 outside it) and a float
    ``attn_mask`` (``MASK = "float"``), ``[BLOCK_Q, BLOCK_S]``."""
    bias = tl.zeros([BLOCK_Q, BLOCK_S], tl.float32)
    if HAS_TABLE:
        bias += tl.load(table_ptr + h * T + idx, mask=inside, other=0.0).to(tl.float32)
    if MASK == "float":
        bias += tl.load(mask_ptr + b * sm_b + h * sm_h + offs_q[:, None] * sm_q + offs_s[None, :] * sm_s,
                        mask=q_in[:, None] & s_in[None, :], other=0.0).to(tl.float32)
    return bias


@triton.jit
def _hidden_layer(x, mlp_w_ptr, mlp_c_ptr, layer, h, H, r, lanes_r, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr,
                  R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Hidden layer ``layer``'s pre-activation ``W x + c`` on a tile, ``x [BLOCK_Q, BLOCK_S, R_PAD]`` (one ``tl.dot``
    over the flattened pairs), and its ``W [R_PAD, R_PAD]`` (rows out, columns in; 0 past ``r``)."""
    base = (layer * H + h) * r
    r_in = lanes_r < r
    weight = tl.load(mlp_w_ptr + (base + lanes_r[:, None]) * r + lanes_r[None, :],
                     mask=r_in[:, None] & r_in[None, :], other=0.0).to(tl.float32)
    bias = tl.load(mlp_c_ptr + base + lanes_r, mask=r_in, other=0.0).to(tl.float32)
    flat = tl.reshape(x, [BLOCK_Q * BLOCK_S, R_PAD])
    pre = tl.dot(flat, tl.trans(weight), input_precision=DOT_PRECISION) + bias[None, :]
    return tl.reshape(pre, [BLOCK_Q, BLOCK_S, R_PAD]), weight


@triton.jit
def _deep_mlp(z, mlp_w_ptr, mlp_c_ptr, n_hidden, h, H, r, lanes_r, ACTIVATION: tl.constexpr,
              BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The last layer's activations ``σ(W_L … σ(z))`` of a kernel MLP with ``n_hidden`` hidden layers (a runtime
    loop), from the first layer's pre-activations ``z [BLOCK_Q, BLOCK_S, R_PAD]``."""
    act = _activation(z, ACTIVATION)
    for layer in range(0, n_hidden):
        pre, _ = _hidden_layer(act, mlp_w_ptr, mlp_c_ptr, layer, h, H, r, lanes_r, BLOCK_Q, BLOCK_S, R_PAD,
                               DOT_PRECISION)
        act = _activation(pre, ACTIVATION)
    return act


@triton.jit
def _relative_positions(pos_q_ptr, pos_s_ptr, b, q_start, offs_q, q_in, offs_s, s_in, k, spq_b, spq_n, spq_c,
                        sps_b, sps_n, sps_c):
    """Position dim ``k`` of the tile's queries and sources relative to ``c``, its first query's position
    (float32; as small as the offsets within the tile)."""
    centre = tl.load(pos_q_ptr + b * spq_b + q_start * spq_n + k * spq_c)
    rel_q = (tl.load(pos_q_ptr + b * spq_b + offs_q * spq_n + k * spq_c, mask=q_in, other=0.0)
             - centre).to(tl.float32)
    rel_s = (tl.load(pos_s_ptr + b * sps_b + offs_s * sps_n + k * sps_c, mask=s_in, other=0.0)
             - centre).to(tl.float32)
    return rel_q, rel_s


@triton.jit
def _mlp_chunk(
    a_ptr, b_ptr, ua_ptr, w2_ptr, pos_q_ptr, pos_s_ptr, b, h, q_start, offs_q, q_in, offs_s, s_in, offs_r, r_in,
    sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c, spq_b, spq_n, spq_c, sps_b, sps_n, sps_c, r, P,
    HAS_POS: tl.constexpr,
):
    """The kernel MLP's pre-activations ``z = a'_i + b'_j`` on kernel lanes ``offs_r`` of a tile, ``[BLOCK_Q,
    BLOCK_S, R_CHUNK]``, with ``Ua (p_i − p_j) = Ua (p_i − c) − Ua (p_j − c)`` folded into ``a'``, ``b'``, and
    ``w2`` on those lanes (0 past ``r``: no term)."""
    a_chunk = tl.load(a_ptr + b * sa_b + h * sa_h + offs_q[:, None] * sa_n + offs_r[None, :] * sa_c,
                      mask=q_in[:, None] & r_in[None, :], other=0.0).to(tl.float32)
    b_chunk = tl.load(b_ptr + b * sb_b + h * sb_h + offs_s[:, None] * sb_n + offs_r[None, :] * sb_c,
                      mask=s_in[:, None] & r_in[None, :], other=0.0).to(tl.float32)
    if HAS_POS:
        for k in range(0, P):
            rel_q, rel_s = _relative_positions(pos_q_ptr, pos_s_ptr, b, q_start, offs_q, q_in, offs_s, s_in, k,
                                               spq_b, spq_n, spq_c, sps_b, sps_n, sps_c)
            ua = tl.load(ua_ptr + (h * r + offs_r) * P + k, mask=r_in, other=0.0).to(tl.float32)
            a_chunk += rel_q[:, None] * ua[None, :]
            b_chunk -= rel_s[:, None] * ua[None, :]
    w2 = tl.load(w2_ptr + h * r + offs_r, mask=r_in, other=0.0).to(tl.float32)
    return a_chunk[:, None, :] + b_chunk[None, :, :], w2


@triton.jit
def _exact_forward_kernel(
    q_ptr, k_ptr, beta_ptr, a_ptr, b_ptr, ua_ptr, w2_ptr, v_ptr, pos_q_ptr, pos_s_ptr, tau_q_ptr, tau_s_ptr,
    w_ptr, pad_ptr, mlp_w_ptr, mlp_c_ptr, table_ptr, ranges_ptr, mask_ptr,
    block_count_ptr, block_list_ptr, block_list_stride, out_ptr, lse_ptr,
    so_b, so_h, so_n, so_c,
    sq_b, sq_h, sq_n, sq_c, sk_b, sk_h, sk_n, sk_c, sa_b, sa_h, sa_n, sa_c, sb_b, sb_h, sb_n, sb_c,
    sv_b, sv_h, sv_n, sv_c, spq_b, spq_n, spq_c, sps_b, sps_n, sps_c,
    stq_b, stq_h, stq_n, sts_b, sts_h, sts_n, sw_b, sw_h, sw_n, spad_b, spad_n, sm_b, sm_h, sm_q, sm_s,
    H, Nq, Ns, d, e, r, P, inv_sqrt_d, support_limit, n_hidden, T,
    MODE: tl.constexpr, SUPPORT: tl.constexpr, ACTIVATION: tl.constexpr, HAS_QK: tl.constexpr,
    HAS_MLP: tl.constexpr, HAS_POS: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_W: tl.constexpr,
    HAS_PAD: tl.constexpr, DEEP: tl.constexpr, HAS_TABLE: tl.constexpr, MASK: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, D_PAD: tl.constexpr,
    E_PAD: tl.constexpr, R_CHUNK: tl.constexpr, R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_q = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    q_start = pid_q * BLOCK_Q
    offs_q = q_start + tl.arange(0, BLOCK_Q)
    q_in = offs_q < Nq
    offs_e = tl.arange(0, E_PAD)
    e_in = offs_e < e
    offs_rc = tl.arange(0, R_CHUNK)

    if HAS_QK:
        offs_d = tl.arange(0, D_PAD)
        d_in = offs_d < d
        q_tile = tl.load(q_ptr + b * sq_b + h * sq_h + offs_q[:, None] * sq_n + offs_d[None, :] * sq_c,
                         mask=q_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
        qk_scale = tl.load(beta_ptr + h).to(tl.float32) * inv_sqrt_d
    if HAS_DECAY:  # as stored (float64 keeps τ_i − τ_j exact on long sequences); cast after the difference
        tau_q = tl.load(tau_q_ptr + b * stq_b + h * stq_h + offs_q * stq_n, mask=q_in, other=0.0)

    top = tl.full([BLOCK_Q], -1e30, tl.float32)  # running max of the base-2 logits (finite: empty rows stay NaN-free)
    total = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, E_PAD], tl.float32)

    n_blocks = tl.load(block_count_ptr + pid_q)
    for t in range(0, n_blocks):
        s_block = tl.load(block_list_ptr + pid_q * block_list_stride + t)
        offs_s = s_block * BLOCK_S + tl.arange(0, BLOCK_S)
        s_in = offs_s < Ns
        visible = _tile_visible(pos_q_ptr, pos_s_ptr, pad_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, spq_b,
                                spq_n, spq_c, sps_b, sps_n, sps_c, spad_b, spad_n, sm_b, sm_h, sm_q, sm_s, P,
                                support_limit, SUPPORT, HAS_PAD, MASK, BLOCK_Q, BLOCK_S)

        # the score s(i, j)
        s = tl.zeros([BLOCK_Q, BLOCK_S], tl.float32)
        if HAS_TABLE or MASK == "float":
            idx, inside = tl.zeros([BLOCK_Q, BLOCK_S], tl.int32), visible
            if HAS_TABLE:
                idx, inside = _table_index(pos_q_ptr, pos_s_ptr, ranges_ptr, b, offs_q, q_in, offs_s, s_in, spq_b,
                                           spq_n, spq_c, sps_b, sps_n, sps_c, P, BLOCK_Q, BLOCK_S)
            s += _score_bias(table_ptr, mask_ptr, b, h, offs_q, q_in, offs_s, s_in, idx, inside & visible, T,
                             sm_b, sm_h, sm_q, sm_s, HAS_TABLE, MASK, BLOCK_Q, BLOCK_S)
        if HAS_QK:
            k_tile = tl.load(k_ptr + b * sk_b + h * sk_h + offs_s[:, None] * sk_n + offs_d[None, :] * sk_c,
                             mask=s_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
            s += tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * qk_scale
        if HAS_MLP and DEEP:  # hidden layers mix the kernel lanes: the whole width at once
            lanes_r = tl.arange(0, R_PAD)
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

        v_tile = tl.load(v_ptr + b * sv_b + h * sv_h + offs_s[:, None] * sv_n + offs_e[None, :] * sv_c,
                         mask=s_in[:, None] & e_in[None, :], other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + b * sw_b + h * sw_h + offs_s * sw_n, mask=s_in, other=0.0).to(tl.float32)
        if HAS_DECAY:
            tau_s = tl.load(tau_s_ptr + b * sts_b + h * sts_h + offs_s * sts_n, mask=s_in, other=0.0)
            log_d = (tau_s[None, :] - tau_q[:, None]).to(tl.float32)
            log_d = tl.where(visible, log_d, 0.0)  # pairs outside the support: no overflow in exp
        if MODE == "softmax":
            logits = s
            if HAS_DECAY:
                logits += log_d
            logits = tl.where(visible, logits * 1.4426950408889634, float("-inf"))  # base 2
            new_top = tl.maximum(top, tl.max(logits, axis=1))
            p = tl.exp2(logits - new_top[:, None])
            if HAS_W:
                p = p * w[None, :]
            rescale = tl.exp2(top - new_top)
            total = total * rescale + tl.sum(p, axis=1)
            acc = acc * rescale[:, None] + tl.dot(p, v_tile, input_precision=DOT_PRECISION)
            top = new_top
        else:
            factor = tl.where(visible, 1.0, 0.0)
            if HAS_DECAY:
                factor = factor * tl.exp(log_d)
            if HAS_W:
                factor = factor * w[None, :]
            acc += tl.dot(s * factor, v_tile, input_precision=DOT_PRECISION)

    out_ptrs = out_ptr + b * so_b + h * so_h + offs_q[:, None] * so_n + offs_e[None, :] * so_c
    if MODE == "softmax":
        seen = total > 0
        safe_total = tl.where(seen, total, 1.0)
        out = tl.where(seen[:, None], acc / safe_total[:, None], 0.0)
        lse = tl.where(seen, (top + tl.log2(safe_total)) * 0.6931471805599453, float("inf"))  # natural log
        tl.store(lse_ptr + bh * Nq + offs_q, lse, mask=q_in)
    else:
        out = acc
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_in[:, None] & e_in[None, :])


class ExactForward(NamedTuple):
    """What the forward kernel stores: ``out [B, H, Nq, e]`` (``v``'s dtype) and, in softmax mode, the
    log-normalizer ``lse [B, H, Nq]`` (float32, natural log, ``+inf`` where a query sees nothing; None in linear
    mode), which the backward pass reads."""

    out: Tensor
    lse: Tensor | None


def interpreting() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when they were
    imported)."""
    return not isinstance(_exact_forward_kernel, triton.runtime.JITFunction)


def environment_problem(device: torch.device) -> str | None:
    """Why the kernels cannot run on tensors on ``device`` here, or None: they run on CUDA tensors, and on CPU
    tensors only under the interpreter."""
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"backend 'triton' runs on CUDA tensors, or on the CPU under Triton's interpreter (TRITON_INTERPRET=1 "
            f"set before itnet_scale is imported); these tensors are on {device.type} and the interpreter is off")


def check_runnable(device: torch.device, tensors: Iterable[Tensor | None]) -> None:
    """Raise unless the kernels can run on these tensors here: ``RuntimeError`` naming the cause where they cannot
    run at all (:func:`environment_problem`), ``ValueError`` for bfloat16 under the interpreter (which computes
    bfloat16 arithmetic wrongly without an error)."""
    problem = environment_problem(device)
    if problem:
        raise RuntimeError(problem)
    if interpreting() and any(t is not None and t.dtype == torch.bfloat16 for t in tensors):
        raise ValueError("bfloat16 inputs under Triton's interpreter (TRITON_INTERPRET=1): it computes bfloat16 "
                         "arithmetic wrongly without an error; run bfloat16 on a GPU, or pass float32")


def unsupported_features(inp: KernelInputs, spec: KernelSpec) -> list[str]:
    """The features of this call that the kernels do not compute yet (empty: they compute the call, forward and
    backward)."""
    found = []
    if inp.attn_mask is not None and inp.attn_mask.is_floating_point() and inp.attn_mask.requires_grad:
        found.append("the gradient of a float attn_mask")
    if any(getattr(inp, name) is not None and getattr(inp, name).dtype == torch.float64 for name in _FEATURES):
        found.append("float64")
    return found


def _power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def padded_extent(n: int) -> int:
    """The lanes a ``tl.dot`` dim of ``n`` (``d``, ``e``) gets: a power of two of at least 16, the rest masked."""
    return max(MIN_DOT, _power_of_two(n))


def _block_for(n: int, largest: int) -> int:
    return min(largest, max(MIN_DOT, _power_of_two(n)))


def _check_power_of_two(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {low}, got {value!r}")


def _strides(t: Tensor | None, n: int) -> tuple[int, ...]:
    return (0,) * n if t is None else tuple(t.stride())


def block_lists(visible: Tensor) -> tuple[Tensor, Tensor]:
    """BlockMask style, from a ``[row blocks, column blocks]`` bool matrix: per row block how many column blocks it
    visits (``[rows]`` int32) and which (``[rows, columns]`` int32, the visible ones first, in order)."""
    count = visible.sum(1, dtype=torch.int32)
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True).to(torch.int32).contiguous()
    return count, order


class KernelLaunch(NamedTuple):
    """What the forward and backward kernels share about one call: block sizes, which source blocks each query
    block sees (``visible``, ``[query blocks, source blocks]`` bool), and the arguments in the kernels' order —
    ``pointers`` (q, k, β, a, b, Ua, w2, v, positions, τ, weights, padding, the hidden layers' W and c, the offset
    table and its ranges, attn_mask; ``v`` stands in for absent ones), ``strides`` of the inputs, ``scalars`` (H,
    Nq, Ns, d, e, r, P, 1/√d, the support's limit, the hidden layers' count, the table's size) and ``constants``
    (the ``tl.constexpr`` ones, by name)."""

    block_q: int
    block_s: int
    visible: Tensor
    pointers: tuple[Tensor, ...]
    strides: tuple[int, ...]
    scalars: tuple
    constants: dict


def kernel_launch(
    inp: KernelInputs, spec: KernelSpec, block_size: tuple[int, int] | None, r_chunk: int | None
) -> KernelLaunch:
    """Check that the kernels can compute this call here and lay out its launch; raises as :func:`exact_forward`
    documents."""
    missing = unsupported_features(inp, spec)
    if missing:
        raise NotImplementedError(f"the triton exact kernels do not compute {', '.join(missing)} yet; the 'torch' "
                                  "backend does (backend 'auto' or 'triton' through ops.integrate falls back to it)")
    check_runnable(inp.v.device, inp.tensors())
    _, H, Nq, Ns, e = inp.shape
    deep = inp.a is not None and inp.mlp_w is not None and inp.mlp_w.shape[0] > 0
    largest = DEEP_BLOCK if deep else DEFAULT_BLOCK
    block_q, block_s = block_size if block_size is not None else (_block_for(Nq, largest), _block_for(Ns, largest))
    _check_power_of_two("block_size", block_q, MIN_DOT)
    _check_power_of_two("block_size", block_s, MIN_DOT)
    chunk = DEFAULT_R_CHUNK if r_chunk is None else r_chunk
    _check_power_of_two("r_chunk", chunk, 1)

    visible = visible_blocks(inp.pos_q, inp.pos_s, spec, (block_q, block_s))
    if visible is None:
        visible = torch.ones(-(-Nq // block_q), -(-Ns // block_s), dtype=torch.bool, device=inp.v.device)
    mask = inp.attn_mask
    mask_kind = "none" if mask is None else "float" if mask.is_floating_point() else "bool"
    if mask_kind == "bool":  # blocks the mask hides for every batch and head are off the lists too
        allowed = mask if mask.dim() == 2 else mask.any(1).any(0)
        allowed = F.pad(allowed, (0, (-Ns) % block_s, 0, (-Nq) % block_q))
        visible = visible.to(mask.device) & allowed.view(visible.shape[0], block_q, -1, block_s).any(3).any(1)
        mask = mask.view(torch.uint8)
    mask_strides = (0, 0, 0, 0) if mask is None else (0, 0, *mask.stride()) if mask.dim() == 2 else mask.stride()
    d = inp.q.shape[-1] if inp.q is not None else 1
    r = inp.a.shape[-1] if inp.a is not None else 1
    weights = inp.weights
    if weights is not None and weights.dim() == 2:
        weights = weights[:, None]  # shared by the heads: a head stride of 0 below
        w_strides = (weights.stride(0), 0, weights.stride(2))
    else:
        w_strides = _strides(weights, 3)
    padding = None if inp.padding is None else inp.padding.to(torch.uint8)
    beta, ua, w2, mlp_w, mlp_c, table = (None if t is None else t.contiguous() for t in (
        inp.beta, inp.pos_weight, inp.w2, inp.mlp_w, inp.mlp_c, inp.table))
    if not deep:
        mlp_w = mlp_c = None  # no hidden layers (or no kernel MLP to put them in)
    ranges = None if table is None else torch.tensor(spec.offset_range, dtype=torch.int32, device=inp.v.device)
    # the support's bound on the lag (causal window), the largest offset (window) or the squared distance (radius)
    size = float(spec.support_size) if math.isfinite(spec.support_size) else 0.0
    support_limit = size * size if spec.support == "radius" else size
    pointers = tuple(inp.v if t is None else t for t in (
        inp.q, inp.k, beta, inp.a, inp.b, ua, w2, inp.v, inp.pos_q, inp.pos_s, inp.tau_q, inp.tau_s, weights,
        padding, mlp_w, mlp_c, table, ranges, mask))
    strides = (*_strides(inp.q, 4), *_strides(inp.k, 4), *_strides(inp.a, 4), *_strides(inp.b, 4),
               *inp.v.stride(), *inp.pos_q.stride(), *inp.pos_s.stride(), *_strides(inp.tau_q, 3),
               *_strides(inp.tau_s, 3), *w_strides, *_strides(padding, 2), *mask_strides)
    scalars = (H, Nq, Ns, d, e, r, inp.pos_q.shape[-1], 1.0 / math.sqrt(d), support_limit,
               mlp_w.shape[0] if deep else 0, spec.table_size if table is not None else 0)
    constants = dict(
        MODE=spec.mode, SUPPORT=spec.support, ACTIVATION=spec.activation, HAS_QK=inp.q is not None,
        HAS_MLP=inp.a is not None, HAS_POS=inp.pos_weight is not None, HAS_DECAY=inp.tau_q is not None,
        HAS_W=weights is not None, HAS_PAD=padding is not None, DEEP=deep, HAS_TABLE=table is not None,
        MASK=mask_kind, BLOCK_Q=block_q, BLOCK_S=block_s, D_PAD=padded_extent(d), E_PAD=padded_extent(e),
        R_CHUNK=chunk, R_PAD=padded_extent(r) if deep else _power_of_two(r),  # hidden layers: tl.dot over r
        DOT_PRECISION="ieee" if inp.v.dtype == torch.float32 else "tf32",  # 16-bit values are exact in tf32
    )
    return KernelLaunch(block_q, block_s, visible.to(inp.v.device), pointers, strides, scalars, constants)


def exact_forward(
    inp: KernelInputs,
    spec: KernelSpec,
    *,
    block_size: tuple[int, int] | None = None,
    r_chunk: int | None = None,
) -> ExactForward:
    """``Σ_j K(i,j) v_j`` and the log-normalizer by the fused kernel (see the module doc); inputs as checked by
    :func:`itnet_scale.ops.integrate`. No autograd: :func:`itnet_scale.ops.triton.integral_transform_triton` is the
    differentiable form (this kernel, then :func:`itnet_scale.ops.triton.exact_backward`).

    Args:
        block_size: ``(queries, sources)`` per program and tile, powers of two ≥ 16 (None: ``min(64, N)`` rounded
            up to a power of two, at least 16).
        r_chunk: kernel-MLP width evaluated at once, a power of two (None: 2).

    Raises ``NotImplementedError`` naming what the kernel does not compute yet (:func:`unsupported_features`),
    ``RuntimeError`` where it cannot run (:func:`environment_problem`), ``ValueError`` for bfloat16 under the
    interpreter (which computes bfloat16 arithmetic wrongly without an error).
    """
    launch = kernel_launch(inp, spec, block_size, r_chunk)
    B, H, Nq, _, e = inp.shape
    block_count, block_list = block_lists(launch.visible)
    out = torch.empty(B, H, Nq, e, dtype=inp.v.dtype, device=inp.v.device)
    lse = torch.empty(B, H, Nq, dtype=torch.float32, device=inp.v.device) if spec.mode == "softmax" else None
    _exact_forward_kernel[(launch.visible.shape[0], B * H)](
        *launch.pointers, block_count, block_list, block_list.stride(0), out, inp.v if lse is None else lse,
        *out.stride(), *launch.strides, *launch.scalars, **launch.constants, num_warps=DEFAULT_NUM_WARPS,
    )
    return ExactForward(out, lse)
