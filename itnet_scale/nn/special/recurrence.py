"""Recurrent special cases of the integral transform: Mamba-1, Mamba-2/SSD, S4 (LTI), minGRU, minLSTM.

Every model here is a *linear* recurrence in its state, ``h_t = a_t ⊙ h_{t−1} + b_t``, and
unrolls into a causal integral over the past::

    h_i = Σ_{j≤i} (Π_{j<t≤i} a_t) b_j,        Π_{j<t≤i} a_t = exp(−(τ_i − τ_j)),  τ_i = Σ_{t≤i} −log a_t

which is the ITNet operator in linear causal mode with the learned decay ``τ`` (DESIGN §1):
``out_i = Σ_j w_j m(i,j) s(i,j) exp(−(τ_i − τ_j)) v_j``. Each constructor below sets the
parameters of one :class:`~itnet_scale.nn.IntegralTransform` so that it computes the model
exactly (to round-off); the sum over time always goes through that layer. Only per-token
pointwise glue stays outside it (``Δ = softplus(δ + bias)``, a gate's log-sigmoid, the
``D·u`` skip, the ``silu(z)`` output gate).

Per model (heads; score ``s(i,j)``; source weight ``w_j``; decay increment; value ``v_j``):

- Mamba-1 :func:`selective_scan`: one head per (channel d, state n); ``C_i[n]·B_j[n]``
  (bilinear, head dim 1); ``Δ_j[d]``; ``Δ_t[d]·(−A[d,n])``; ``u_j[d]``.
- Mamba-2 :func:`ssd`: one head per SSD head; ``C_i·B_j`` (head dim = state size); ``dt_j``;
  ``dt_t·(−A)``; ``x_j``.
- S4 LTI :func:`s4_lti`: one head per channel; offset table ``t(i−j) = C Āⁱ⁻ʲ B̄``; 1; none; ``u_j``.
- minGRU :func:`from_min_gru`: one head per hidden unit; ``σ(Wz x_j + bz)`` (kernel MLP, r = 1);
  1; ``softplus(Wz x_t + bz)``; ``Wh x_j + bh``.
- minLSTM :func:`from_min_lstm`: one head per hidden unit; ``σ(ℓ_j)``; 1; ``softplus(ℓ_t)``;
  ``Wh x_j + bh``.

(minLSTM: ``ℓ = log σ(Wi x + bi) − log σ(Wf x + bf)``, computed per token as glue.)

**LSTM and GRU are not special cases of one layer.** Their gates read the previous hidden
state (``z_t = σ(Wz x_t + Uz h_{t−1})``, ``h̃_t = tanh(W x_t + U (r_t ⊙ h_{t−1}))``), so the
recurrence is nonlinear in the state: no choice of a fixed kernel ``K(i,j)`` — which depends
on the inputs only, never on earlier outputs — reproduces it, and one layer of the transform
cannot be exact. A stack of layers with pointwise MLPs can approximate them;
``tools/distill_rnn.py`` measures how well by distilling a random ``nn.GRU`` into a small ITNet.

Exactness notes:

- The decay is a difference of cumulative sums, ``τ_i − τ_j``. The layer keeps ``τ`` in
  float64 so the difference stays exact however large ``τ_N`` grows: measured on Mamba-1 in
  fp32 against an fp64 scan, ~2e-7 relative at ``τ_N ≈ 2000`` (L = 1500), the same as an fp32
  sequential scan. fp64 stays at ~1e-15.
- A sequential scan multiplies ``exp(Δ·A)`` step by step and needs ``A < 0`` only for
  stability. Here ``−A`` becomes ``exp(decay_log_rate)``, so ``A`` must be negative:
  :func:`selective_scan` and :func:`ssd` refuse ``A ≥ 0`` (and complex ``A``) with a ``ValueError``.
- The final recurrent state (``return_last_state`` / ``return_final_state``) is computed by the
  operator too: ``n`` extra query tokens are appended after the sequence, each with zero
  source weight and zero decay increment, whose query is the one-hot ``e_k`` in place of
  ``C``, so query ``k`` reads ``Σ_j B_j[k] Δ_j exp(−(τ_L − τ_j)) u_j = h_L[k]``.

The functional forms (:func:`selective_scan`, :func:`ssd`, :func:`s4_lti`) build the layer's
parameters from their arguments on every call (differentiably, through
:func:`torch.func.functional_call`), so gradients reach ``A``, ``B``, ``C`` … exactly as in a
sequential scan. Their parameter matrices are dense selections of size
``heads × features`` — fine for tests and conversions of small models, wasteful at Mamba scale.
The module forms (:func:`from_s4`, :func:`from_min_gru`, :func:`from_min_lstm`) copy the
weights into an ordinary trainable ``IntegralTransform``.
"""

from __future__ import annotations

import copy
import math
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from itnet_scale.nn.integral_transform import IntegralTransform, KernelConfig
from itnet_scale.ops import Exact

__all__ = [
    "S4LTI",
    "MinGRU",
    "MinLSTM",
    "from_min_gru",
    "from_min_lstm",
    "from_s4",
    "s4_kernel",
    "s4_lti",
    "selective_scan",
    "ssd",
]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


#: The kernel of the state-space scans: linear, causal, the decay's increments given as they are (Δ·(−A) ≥ 0).
_SCAN_KERNEL = KernelConfig(mode="linear", support="causal", width=0, decay=True, decay_activation="identity")


def _work_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The common floating dtype, at least fp32 (half inputs are computed in fp32, like Mamba)."""
    return reduce(torch.promote_types, [t.dtype for t in tensors if t is not None], torch.float32)


def _skeleton(dim: int, heads: int, kernel: KernelConfig, integrator: Exact | None, **sizes: int) -> IntegralTransform:
    """An ``IntegralTransform`` on the meta device: its parameters are all supplied per call."""
    with torch.device("meta"):
        return IntegralTransform(dim, heads, kernel, integrator, **sizes)


def _select(rows: Tensor, cols: Tensor, shape: tuple[int, int], like: Tensor,
            values: Tensor | None = None) -> Tensor:
    """A ``shape`` matrix, zero except ``M[rows, cols] = values`` (default 1); differentiable in ``values``."""
    m = like.new_zeros(shape)
    vals = like.new_ones(rows.shape) if values is None else values.to(like.dtype)
    return m.index_put((rows.to(like.device), cols.to(like.device)), vals)


def _run(layer: IntegralTransform, params: dict[str, Tensor], feats: Tensor, weights: Tensor | None) -> Tensor:
    """``layer(feats, weights=weights)`` with ``params`` as its parameters."""
    kwargs = {} if weights is None else {"weights": weights}
    return functional_call(layer, params, (feats,), kwargs, strict=True)


def _check_negative_real(name: str, A: Tensor) -> None:
    if A.is_complex():
        raise ValueError(f"{name} must be real; complex (S4D-style) {name} is not supported "
                         f"(write a conjugate pair as a real 2×2 block and use s4_lti)")
    if not bool((A < 0).all()):
        raise ValueError(f"{name} must be strictly negative (the decay rate −{name} enters as "
                         f"exp(decay_log_rate)); got max {name} = {A.max().item():.4g}")


def _shape_error(name: str, expected: str, t: Tensor) -> ValueError:
    return ValueError(f"{name} must be {expected}, got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------------------
# Mamba-1: the selective scan
# --------------------------------------------------------------------------------------


def _check_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                          z: Tensor | None, delta_bias: Tensor | None) -> None:
    if u.dim() != 3:
        raise _shape_error("u", "[batch, dim, length]", u)
    b, d, L = u.shape
    if L == 0:
        raise ValueError("u has length 0: nothing to scan")
    if tuple(delta.shape) != (b, d, L):
        raise _shape_error("delta", f"[{b}, {d}, {L}] like u", delta)
    if A.dim() != 2 or A.shape[0] != d:
        raise _shape_error("A", f"[dim={d}, dstate]", A)
    _check_negative_real("A", A)
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.is_complex():
            raise ValueError(f"{name} must be real")
        if M.dim() == 2:
            ok = tuple(M.shape) == (d, n)
        elif M.dim() == 3:
            ok = tuple(M.shape) == (b, n, L)
        elif M.dim() == 4:
            ok = M.shape[0] == b and M.shape[2:] == (n, L) and M.shape[1] > 0 and d % M.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise _shape_error(name, f"[dim={d}, dstate={n}] (time-invariant), [batch={b}, dstate={n}, length={L}] "
                               f"or [batch={b}, groups dividing {d}, dstate={n}, length={L}]", M)
    if D is not None and tuple(D.shape) != (d,):
        raise _shape_error("D", f"[dim={d}]", D)
    if z is not None and tuple(z.shape) != (b, d, L):
        raise _shape_error("z", f"[{b}, {d}, {L}] like u", z)
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise _shape_error("delta_bias", f"[dim={d}]", delta_bias)


def _time_features(M: Tensor, dtype: torch.dtype) -> tuple[Tensor, int]:
    """Variable ``B``/``C`` ``[b, n, L]`` or ``[b, g, n, L]`` → per-token features ``[b, L, g·n]``, and ``g``."""
    if M.dim() == 3:
        M = M[:, None]
    g = M.shape[1]
    return M.to(dtype).permute(0, 3, 1, 2).flatten(2), g


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    integrator: Exact | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-1's selective scan, computed by one ``IntegralTransform`` (linear, causal, decay).

    Same arguments and result as Mamba's ``selective_scan_ref`` (real ``A``)::

        Δ = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
        x_t[d,n] = exp(Δ_t[d] A[d,n]) x_{t−1}[d,n] + Δ_t[d] B_t[n] u_t[d]       (x_{−1} = 0)
        y_t[d] = Σ_n C_t[n] x_t[d,n] + D[d] u_t[d];   out = y · silu(z)

    The operator has one head per (channel ``d``, state ``n``) pair with head dim 1 and value
    dim 1: ``q_i = C_i[n]``, ``k_j = B_j[n]``, ``v_j = u_j[d]``, source weight ``Δ_j[d]`` and decay
    increment ``Δ_t[d]·(−A[d,n])`` (``decay_proj`` selects ``Δ``, identity activation,
    ``decay_log_rate = log(−A)``); ``o_proj`` sums the heads of a channel over ``n``. ``Δ`` is
    computed once per token as glue so that the weight and the decay see the same numbers.

    Args:
        u: ``[batch, dim, length]`` inputs.
        delta: ``[batch, dim, length]`` raw step sizes.
        A: ``[dim, dstate]``, real and strictly negative (Mamba: ``−exp(A_log)``).
        B, C: ``[dim, dstate]`` (time-invariant), ``[batch, dstate, length]`` or
            ``[batch, groups, dstate, length]`` (channel ``d`` uses group ``d // (dim/groups)``).
        D: ``[dim]`` skip. z: ``[batch, dim, length]`` output gate. delta_bias: ``[dim]``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return ``x_L`` ``[batch, dim, dstate]`` (through the operator,
            as ``dstate`` extra one-hot queries; differentiable).
        integrator: the layer's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).

    Returns ``out`` ``[batch, dim, length]`` in ``u``'s dtype (computed in at least fp32), and
    ``last_state`` if asked.
    """
    _check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    b, d, L = u.shape
    n = A.shape[1]
    H = d * n
    wd = _work_dtype(u, delta, A, B, C, D, z, delta_bias)

    dl = delta.to(wd).transpose(1, 2)  # [b, L, d]
    if delta_bias is not None:
        dl = dl + delta_bias.to(wd)
    if delta_softplus:
        dl = F.softplus(dl)
    uu = u.to(wd).transpose(1, 2)

    head_d = torch.arange(d).repeat_interleave(n)  # head h = d·n + n'
    head_n = torch.arange(n).repeat(d)
    heads = torch.arange(H)

    # Per-token features: [Δ (d) | u (d) | B_t (gB·n) | C_t (gC·n) | one-hot e (n) | flag (1)].
    blocks, off = [dl, uu], 2 * d
    if B.dim() >= 3:
        Bf, gB = _time_features(B, wd)
        off_B, off = off, off + Bf.shape[-1]
        blocks.append(Bf)
    if C.dim() >= 3:
        Cf, gC = _time_features(C, wd)
        off_C, off = off, off + Cf.shape[-1]
        blocks.append(Cf)
    extra = n if return_last_state else 0
    off_E, off_F = off, off + n
    n_feat = off + (n + 1 if return_last_state else 0)
    feats = torch.cat(blocks, -1)
    if return_last_state:
        ones = feats.new_ones(b, L, 1)
        feats = torch.cat([feats, feats.new_zeros(b, L, n), ones], -1)
        tail = feats.new_zeros(b, n, n_feat)
        # extra query k reads state k: one-hot query, no source weight, no decay increment
        tail[:, :, off_E:off_E + n] = torch.eye(n, dtype=wd, device=feats.device)
        feats = torch.cat([feats, tail], 1)

    like = feats.new_zeros(())
    zeros_h = feats.new_zeros(H)
    p: dict[str, Tensor] = {}
    # q = C: selected from the features, or the constant C as a bias (times the flag with extra queries).
    if C.dim() >= 3:
        q_w = _select(heads, off_C + (head_d // (d // gC)) * n + head_n, (H, n_feat), like)
        q_b = zeros_h
    elif return_last_state:
        q_w = _select(heads, torch.full((H,), off_F), (H, n_feat), like, C.reshape(H))
        q_b = zeros_h
    else:
        q_w, q_b = feats.new_zeros(H, n_feat), C.to(wd).reshape(H)
    if return_last_state:
        q_w = q_w + _select(heads, off_E + head_n, (H, n_feat), like)
    p["q_proj.weight"], p["q_proj.bias"] = q_w, q_b
    if B.dim() >= 3:
        p["k_proj.weight"] = _select(heads, off_B + (head_d // (d // gB)) * n + head_n, (H, n_feat), like)
        p["k_proj.bias"] = zeros_h
    else:
        p["k_proj.weight"], p["k_proj.bias"] = feats.new_zeros(H, n_feat), B.to(wd).reshape(H)
    p["beta"] = feats.new_ones(H)  # β/√1 = 1
    p["v_proj.weight"], p["v_proj.bias"] = _select(heads, d + head_d, (H, n_feat), like), zeros_h
    p["o_proj.weight"], p["o_proj.bias"] = _select(head_d, heads, (d, H), like), feats.new_zeros(d)
    p["decay_proj.weight"], p["decay_proj.bias"] = _select(heads, head_d, (H, n_feat), like), zeros_h
    p["decay_log_rate"] = torch.log(-A.to(wd)).reshape(H)

    weights = dl[:, :, head_d]  # [b, L, H]: Δ_j[d] per head
    if extra:
        weights = torch.cat([weights, weights.new_zeros(b, extra, H)], 1)

    layer = _skeleton(n_feat, H, _SCAN_KERNEL, integrator, head_dim=1, value_dim=1, out_dim=d)
    y_all = _run(layer, p, feats, weights)  # [b, L + extra, d]

    y = y_all[:, :L]
    if D is not None:
        y = y + uu * D.to(wd)
    if z is not None:
        y = y * F.silu(z.to(wd).transpose(1, 2))
    out = y.transpose(1, 2).to(u.dtype)
    if return_last_state:
        return out, y_all[:, L:].transpose(1, 2)  # [b, d, n]
    return out


# --------------------------------------------------------------------------------------
# Mamba-2: state-space duality (scalar decay per head)
# --------------------------------------------------------------------------------------


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    return_final_state: bool = False,
    integrator: Exact | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's SSD layer (scalar decay per head), computed by one ``IntegralTransform``.

    Matches ``ssd_minimal_discrete(x * dt[..., None], A * dt, B, C)`` of Mamba-2 (one group;
    several groups follow ``mamba_chunk_scan_combined``: contiguous blocks of heads share a
    group), plus an optional ``D`` skip::

        h_t = exp(dt_t A) h_{t−1} + dt_t x_t ⊗ B_t        (h_t: [head_dim, dstate] per head)
        y_t = h_t C_t + D x_t

    Per SSD head: ``q_i = C_i``, ``k_j = B_j`` (head dim = ``dstate``, ``β = √dstate`` so the
    bilinear term is the plain dot product), ``v_j = x_j``, source weight ``dt_j`` and decay
    increment ``dt_t·(−A)`` (``decay_log_rate = log(−A)``).

    Args:
        x: ``[batch, length, heads, head_dim]``.
        dt: ``[batch, length, heads]`` step sizes (already positive; no softplus is applied).
        A: ``[heads]``, real and strictly negative.
        B, C: ``[batch, length, groups, dstate]`` with ``heads % groups == 0``; head ``h`` uses
            group ``h // (heads/groups)`` (``groups = heads``: one B, C per head).
        D: optional ``[heads]`` skip.
        return_final_state: also return ``h_L`` ``[batch, heads, head_dim, dstate]`` (computed by
            the operator as ``dstate`` extra one-hot queries; ``ssd_minimal_discrete`` returns it
            with a groups axis, ``[batch, 1, heads, head_dim, dstate]``).
        integrator: the layer's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).

    Returns ``y`` ``[batch, length, heads, head_dim]`` in ``x``'s dtype, and the final state if asked.
    """
    if x.dim() != 4:
        raise _shape_error("x", "[batch, length, heads, head_dim]", x)
    b, L, h, P = x.shape
    if L == 0:
        raise ValueError("x has length 0: nothing to scan")
    if tuple(dt.shape) != (b, L, h):
        raise _shape_error("dt", f"[batch={b}, length={L}, heads={h}]", dt)
    if tuple(A.shape) != (h,):
        raise _shape_error("A", f"[heads={h}]", A)
    _check_negative_real("A", A)
    if B.dim() != 4 or B.shape[:2] != (b, L) or B.shape[2] == 0 or h % B.shape[2]:
        raise _shape_error("B", f"[batch={b}, length={L}, groups dividing {h}, dstate]", B)
    if tuple(C.shape) != tuple(B.shape):
        raise _shape_error("C", f"{tuple(B.shape)} like B", C)
    if D is not None and tuple(D.shape) != (h,):
        raise _shape_error("D", f"[heads={h}]", D)
    g, n = B.shape[2], B.shape[3]
    wd = _work_dtype(x, dt, A, B, C, D)

    xs, dts = x.to(wd), dt.to(wd)
    # Per-token features: [dt (h) | x (h·P) | B (g·n) | C (g·n) | one-hot e (n)].
    off_x, off_B, off_C, off_E = h, h + h * P, h + h * P + g * n, h + h * P + 2 * g * n
    extra = n if return_final_state else 0
    n_feat = off_E + extra
    feats = torch.cat([dts, xs.flatten(2), B.to(wd).flatten(2), C.to(wd).flatten(2)], -1)
    if extra:
        feats = torch.cat([feats, feats.new_zeros(b, L, n)], -1)
        tail = feats.new_zeros(b, n, n_feat)
        tail[:, :, off_E:] = torch.eye(n, dtype=wd, device=feats.device)
        feats = torch.cat([feats, tail], 1)

    like = feats.new_zeros(())
    hq = torch.arange(h).repeat_interleave(n)  # q/k row (head, state)
    nq = torch.arange(n).repeat(h)
    grp = hq // (h // g)
    rows_qk, rows_v = torch.arange(h * n), torch.arange(h * P)
    p = {
        "q_proj.weight": _select(rows_qk, off_C + grp * n + nq, (h * n, n_feat), like),
        "k_proj.weight": _select(rows_qk, off_B + grp * n + nq, (h * n, n_feat), like),
        "q_proj.bias": feats.new_zeros(h * n),
        "k_proj.bias": feats.new_zeros(h * n),
        "beta": feats.new_full((h,), math.sqrt(n)),
        "v_proj.weight": _select(rows_v, off_x + rows_v, (h * P, n_feat), like),
        "v_proj.bias": feats.new_zeros(h * P),
        "o_proj.weight": torch.eye(h * P, dtype=wd, device=feats.device),
        "o_proj.bias": feats.new_zeros(h * P),
        "decay_proj.weight": _select(torch.arange(h), torch.arange(h), (h, n_feat), like),
        "decay_proj.bias": feats.new_zeros(h),
        "decay_log_rate": torch.log(-A.to(wd)),
    }
    if extra:
        p["q_proj.weight"] = p["q_proj.weight"] + _select(rows_qk, off_E + nq, (h * n, n_feat), like)
    weights = dts if not extra else torch.cat([dts, dts.new_zeros(b, extra, h)], 1)
    layer = _skeleton(n_feat, h, _SCAN_KERNEL, integrator, head_dim=n, value_dim=P, out_dim=h * P)
    y_all = _run(layer, p, feats, weights).unflatten(-1, (h, P))  # [b, L+extra, h, P]
    y = y_all[:, :L]
    if D is not None:
        y = y + xs * D.to(wd)[:, None]
    y = y.to(x.dtype)
    if extra:
        return y, y_all[:, L:].permute(0, 2, 3, 1)  # [b, h, P, n]
    return y


# --------------------------------------------------------------------------------------
# S4 (LTI): the offset table is the convolution kernel
# --------------------------------------------------------------------------------------


def _check_s4(A_bar: Tensor, B_bar: Tensor, C: Tensor) -> tuple[int, int]:
    for name, t in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        if t.is_complex():
            raise ValueError(f"{name} must be real (write a complex conjugate pair as a real 2×2 block)")
    if B_bar.dim() != 2:
        raise _shape_error("B_bar", "[channels, dstate]", B_bar)
    H, N = B_bar.shape
    if tuple(C.shape) != (H, N):
        raise _shape_error("C", f"[channels={H}, dstate={N}] like B_bar", C)
    if tuple(A_bar.shape) not in ((H, N, N), (H, N)):
        raise _shape_error("A_bar", f"[channels={H}, dstate={N}, dstate={N}] or diagonal [{H}, {N}]", A_bar)
    return H, N


def s4_kernel(A_bar: Tensor, B_bar: Tensor, C: Tensor, length: int) -> Tensor:
    """The S4 convolution kernel ``K[h, δ] = C[h] Ā[h]^δ B̄[h]`` for ``δ = 0 … length−1``.

    Args:
        A_bar: discretized state matrix ``[channels, dstate, dstate]``, or its diagonal
            ``[channels, dstate]``.
        B_bar: ``[channels, dstate]`` discretized input vector (one input per channel).
        C: ``[channels, dstate]`` output vector.
        length: number of lags.

    Returns ``[channels, length]`` (differentiable in all three).
    """
    _check_s4(A_bar, B_bar, C)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    diagonal = A_bar.dim() == 2
    x, ks = B_bar, []
    for _ in range(length):  # Āᵟ B̄ by repeated products: the kernel, not a scan over data
        ks.append((C * x).sum(-1))
        x = A_bar * x if diagonal else (A_bar @ x[..., None])[..., 0]
    return torch.stack(ks, -1)


def _s4_table(K: Tensor) -> Tensor:
    """``[H, L]`` kernel → offset table ``[H, 2L−1]`` over offsets ``−(L−1) … L−1`` (zero for δ < 0)."""
    return torch.cat([K.new_zeros(K.shape[0], K.shape[1] - 1), K], -1)


def _s4_layer(H: int, max_length: int, integrator: Exact | None = None, meta: bool = False) -> IntegralTransform:
    """One head per channel, value dim 1, linear causal, the offset table up to lag ``max_length − 1``."""
    kernel = KernelConfig(mode="linear", support="causal", width=0, bilinear=False, offset_range=max_length - 1)
    if meta:
        return _skeleton(H, H, kernel, integrator, head_dim=1, value_dim=1)
    return IntegralTransform(H, H, kernel, integrator, head_dim=1, value_dim=1)


def s4_lti(
    u: Tensor,
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    integrator: Exact | None = None,
) -> Tensor:
    """An S4 layer in its LTI form, computed by one ``IntegralTransform`` with an offset table.

    ``x_t = Ā x_{t−1} + B̄ u_t``, ``y_t = C x_t + D u_t`` per channel (depthwise), i.e. the causal
    convolution ``y_i = Σ_{j≤i} K[i−j] u_j + D u_i`` with ``K`` from :func:`s4_kernel`. The layer
    has one head per channel, value dim 1, bilinear term and kernel MLP off, and the offset
    table ``t(δ) = K[δ]`` (δ ≥ 0) in linear causal mode.

    Args:
        u: ``[batch, length, channels]``.
        A_bar, B_bar, C: as in :func:`s4_kernel`. D: optional ``[channels]`` skip.
        integrator: the layer's :class:`~itnet_scale.ops.Exact` setting (backend, tile size).

    Returns ``[batch, length, channels]``.
    """
    H, _ = _check_s4(A_bar, B_bar, C)
    if u.dim() != 3 or u.shape[-1] != H:
        raise _shape_error("u", f"[batch, length, channels={H}]", u)
    if u.shape[1] == 0:
        raise ValueError("u has length 0: nothing to convolve")
    if D is not None and tuple(D.shape) != (H,):
        raise _shape_error("D", f"[channels={H}]", D)
    L = u.shape[1]
    wd = _work_dtype(u, A_bar, B_bar, C, D)
    K = s4_kernel(A_bar.to(wd), B_bar.to(wd), C.to(wd), L)
    eye = torch.eye(H, dtype=wd, device=u.device)
    zeros = u.new_zeros(H, dtype=wd)
    p = {"v_proj.weight": eye, "v_proj.bias": zeros, "o_proj.weight": eye, "o_proj.bias": zeros,
         "table": _s4_table(K)}
    y = _run(_s4_layer(H, L, integrator, meta=True), p, u.to(wd), None)
    if D is not None:
        y = y + u.to(wd) * D.to(wd)
    return y.to(u.dtype)


class S4LTI(nn.Module):
    """An S4 LTI layer held as a trainable ``IntegralTransform`` (see :func:`from_s4`).

    ``forward(u [batch, length ≤ max_length, channels]) → [batch, length, channels]``.
    """

    def __init__(self, transform: IntegralTransform, D: Tensor | None, max_length: int) -> None:
        super().__init__()
        self.transform = transform
        self.D = nn.Parameter(D) if D is not None else None
        self.max_length = max_length

    def forward(self, u: Tensor) -> Tensor:
        if u.dim() != 3 or u.shape[-1] != self.transform.dim:
            raise _shape_error("u", f"[batch, length, channels={self.transform.dim}]", u)
        if u.shape[1] > self.max_length:
            raise ValueError(f"u has length {u.shape[1]} > max_length={self.max_length}: the offset table "
                             f"stops at lag {self.max_length - 1}")
        y = self.transform(u)
        return y if self.D is None else y + u * self.D


def from_s4(A_bar: Tensor, B_bar: Tensor, C: Tensor, D: Tensor | None = None, *, max_length: int) -> S4LTI:
    """An :class:`S4LTI` module equal to the S4 recurrence on sequences up to ``max_length``.

    The kernel ``C Āᵟ B̄`` (``δ < max_length``) is written into the offset table of an
    ``IntegralTransform`` (one head per channel); the module is an ordinary trainable layer.
    Shapes as in :func:`s4_lti`.
    """
    H, _ = _check_s4(A_bar, B_bar, C)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if D is not None and tuple(D.shape) != (H,):
        raise _shape_error("D", f"[channels={H}]", D)
    with torch.no_grad():
        K = s4_kernel(A_bar, B_bar, C, max_length)
        layer = _s4_layer(H, max_length).to(K.dtype)
        eye = torch.eye(H, dtype=K.dtype)
        layer.v_proj.weight.copy_(eye)
        layer.v_proj.bias.zero_()
        layer.o_proj.weight.copy_(eye)
        layer.o_proj.bias.zero_()
        layer.table.copy_(_s4_table(K))
    return S4LTI(layer.to(K.device), None if D is None else D.detach().clone(), max_length)


# --------------------------------------------------------------------------------------
# minGRU / minLSTM (Feng et al. 2024, "Were RNNs All We Needed?")
# --------------------------------------------------------------------------------------


def _linear_parts(name: str, lin: nn.Linear) -> tuple[Tensor, Tensor]:
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"{name} must be an nn.Linear, got {type(lin).__name__}")
    W = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else W.new_zeros(W.shape[0])
    return W, b


def _gated_layer(in_dim: int, hidden: int, W_gate: Tensor, b_gate: Tensor, W_v: Tensor, b_v: Tensor
                 ) -> IntegralTransform:
    """Depthwise gated linear recurrence ``h_t = σ(−g_t) h_{t−1} + σ(g_t) v_t``, ``g = W_gate x + b_gate``.

    One head per hidden unit (value dim 1): decay increment ``softplus(g_t) = −log σ(−g_t)``,
    score ``σ(b_j + c)`` from a width-1 sigmoid kernel MLP (``a_i`` = c, ``w2 = 1``), ``v = W_v x + b_v``.
    """
    kernel = KernelConfig(mode="linear", support="causal", width=1, activation="sigmoid", bilinear=False, decay=True)
    layer = IntegralTransform(in_dim, hidden, kernel, head_dim=1, value_dim=1, out_dim=hidden).to(W_gate.dtype)
    with torch.no_grad():
        layer.decay_proj.weight.copy_(W_gate)
        layer.decay_proj.bias.copy_(b_gate)
        layer.decay_log_rate.zero_()
        layer.a_proj.weight.zero_()
        layer.a_proj.bias.copy_(b_gate)  # c
        layer.b_proj.weight.copy_(W_gate)
        layer.pos_proj.weight.zero_()
        layer.w2.fill_(1.0)
        layer.v_proj.weight.copy_(W_v)
        layer.v_proj.bias.copy_(b_v)
        layer.o_proj.weight.copy_(torch.eye(hidden, dtype=W_gate.dtype))
        layer.o_proj.bias.zero_()
    return layer.to(W_gate.device)


class MinGRU(nn.Module):
    """minGRU as an ``IntegralTransform``: ``forward(x [batch, length, dim]) → h [batch, length, hidden]``.

    ``h_t = (1 − z_t) h_{t−1} + z_t h̃_t``, ``z_t = σ(Wz x_t + bz)``, ``h̃_t = Wh x_t + bh``, ``h_0 = 0``.
    Built by :func:`from_min_gru`; the whole computation is the layer ``transform``.
    """

    def __init__(self, transform: IntegralTransform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)


def from_min_gru(linear_z: nn.Linear, linear_h: nn.Linear) -> MinGRU:
    """A :class:`MinGRU` equal to the minGRU with update gate ``linear_z`` and candidate ``linear_h``.

    Heads = hidden units. ``1 − z_t = σ(−y_t)`` so the decay increment is
    ``−log(1 − z_t) = softplus(y_t)`` (``decay_proj = linear_z``, softplus); the input gate
    ``z_j = σ(y_j)`` is the kernel MLP with ``σ = sigmoid``, ``r = 1``, ``a_i = bz``, ``b_j = Wz x_j``,
    ``w2 = 1``; ``v_j = Wh x_j + bh``. The weights are copied (the module trains on its own).
    """
    Wz, bz = _linear_parts("linear_z", linear_z)
    Wh, bh = _linear_parts("linear_h", linear_h)
    if Wz.shape != Wh.shape:
        raise ValueError(f"linear_z and linear_h must have the same shape, got {tuple(Wz.shape)} and "
                         f"{tuple(Wh.shape)}")
    hidden, in_dim = Wz.shape
    return MinGRU(_gated_layer(in_dim, hidden, Wz, bz, Wh, bh))


class MinLSTM(nn.Module):
    """minLSTM as an ``IntegralTransform``: ``forward(x [batch, length, dim]) → h [batch, length, hidden]``.

    ``h_t = f'_t h_{t−1} + i'_t h̃_t`` with ``f = σ(Wf x + bf)``, ``i = σ(Wi x + bi)``,
    ``f' = f/(f+i)``, ``i' = i/(f+i)``, ``h̃ = Wh x + bh``, ``h_0 = 0``. Per token the glue computes
    ``ℓ = log σ(Wi x + bi) − log σ(Wf x + bf)`` (``linear_f``, ``linear_i``); then ``f' = σ(−ℓ)``,
    ``i' = σ(ℓ)`` and the layer ``transform`` reads ``[x, ℓ]``.
    """

    def __init__(self, linear_f: nn.Linear, linear_i: nn.Linear, transform: IntegralTransform) -> None:
        super().__init__()
        self.linear_f, self.linear_i, self.transform = linear_f, linear_i, transform

    def forward(self, x: Tensor) -> Tensor:
        ell = F.logsigmoid(self.linear_i(x)) - F.logsigmoid(self.linear_f(x))
        return self.transform(torch.cat([x, ell], -1))


def from_min_lstm(linear_f: nn.Linear, linear_i: nn.Linear, linear_h: nn.Linear) -> MinLSTM:
    """A :class:`MinLSTM` equal to the minLSTM with gates ``linear_f``, ``linear_i`` and candidate ``linear_h``.

    ``−log f'_t = softplus(ℓ_t)`` is the decay increment and ``i'_j = σ(ℓ_j)`` the kernel MLP
    (sigmoid, r = 1, ``b_j = ℓ_j``), with ``ℓ`` the per-token glue of :class:`MinLSTM`. The layer's
    features are ``[x (dim), ℓ (hidden)]``. The weights are copied.
    """
    Wf, _ = _linear_parts("linear_f", linear_f)
    Wi, _ = _linear_parts("linear_i", linear_i)
    Wh, bh = _linear_parts("linear_h", linear_h)
    if not (Wf.shape == Wi.shape == Wh.shape):
        raise ValueError(f"linear_f, linear_i and linear_h must have the same shape, got {tuple(Wf.shape)}, "
                         f"{tuple(Wi.shape)} and {tuple(Wh.shape)}")
    hidden, in_dim = Wf.shape
    sel = torch.cat([Wf.new_zeros(hidden, in_dim), torch.eye(hidden, dtype=Wf.dtype, device=Wf.device)], 1)
    Wv = torch.cat([Wh, Wh.new_zeros(hidden, hidden)], 1)
    layer = _gated_layer(in_dim + hidden, hidden, sel, Wf.new_zeros(hidden), Wv, bh)
    return MinLSTM(copy.deepcopy(linear_f), copy.deepcopy(linear_i), layer)
