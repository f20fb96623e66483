"""Tiled exact integrator: query blocks × source blocks, online normalization.

Forward walks source blocks for each query block, keeping a running max ``M``, normalizer
``L`` and accumulator (as FlashAttention does), so no more than one ``[B, H, bq, bs, r]``
tile of the kernel MLP is alive at a time. It saves only the output and the log-normalizer
``lse = M + log L``; backward recomputes each tile's score and applies closed-form
gradients. Memory is ``O(N·(d + r))`` plus one tile, never ``O(N²·r)``.

Gradients of one tile, softmax mode (``P = K``)::

    dP_ij = do_i·v_j        Δ_i = do_i·o_i        ds_ij = P_ij (dP_ij − Δ_i)
    dv_j = Σ_i P_ij do_i    dw_j = Σ_i (P_ij / w_j)(dP_ij − Δ_i)    dτ_j = Σ_i ds_ij

linear mode (``K_ij = w_j m s_ij D_ij``)::

    dK_ij = do_i·v_j        ds_ij = dK_ij w_j m D_ij     dlog D_ij = dK_ij K_ij

and from ``ds``: ``dq = β/√d · ds k``, ``dk = β/√d · dsᵀ q``, the kernel MLP by hand-written
backprop (:func:`itnet_scale.ops.kernel_mlp.mlp_backward`), the offset table by scatter-add.

The kernel MLP's position term is separable, ``Ua (p_i − p_j) = Ua (p_i − c) − Ua (p_j − c)``: each tile folds
it into ``a_i`` and ``b_j`` with ``c`` its first query's position (small shifted positions, so fp32 rounding is
that of offsets within a tile, not of absolute positions), and gets ``dUa`` and the position gradients back from
``da``, ``db``; per pair the MLP then only adds, activates and reads out.

The two per-tile functions are plain torch; on 16/32-bit floats they run through
``torch.compile`` (C++ loops on CPU, Triton on GPU), which fuses the ``r``-wide kernel-MLP
loops instead of materializing them. Tiles that no pair of the support can reach (causal,
windows, radius) are skipped using the bounding boxes of the block positions; for local supports
(windows, radii, causal windows) the blocks are sized to the support (:func:`default_block`) and a
query block's visible source blocks are merged into one tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from itnet_scale.ops.compile import TileFunction, compile_wanted
from itnet_scale.ops.kernel_mlp import MLPGrads, mlp_backward, mlp_layers, mlp_scores
from itnet_scale.ops.spec import (
    KernelInputs,
    KernelSpec,
    decay_log,
    mask_block,
    offsets,
    source_weights,
    support_mask,
    table_index,
    table_lookup,
)

DEFAULT_BLOCK = (256, 256)
LOCAL_QUERY_BLOCK_MIN, LOCAL_SOURCE_BLOCK_MIN = 64, 16  # local supports: smaller tiles cost more in overhead


def _power_of_two_at_least(x: float, low: int, high: int) -> int:
    return min(high, max(low, 1 << max(0, math.ceil(math.log2(max(x, 1))))))


def default_block(spec: KernelSpec) -> tuple[int, int]:
    """The ``(query, source)`` block shape when none is given: 256 × 256; for a window / radius / causal window
    of half-width ``s``, query blocks of the power of two ≥ 4s (64 to 256) and source blocks of the power of two
    ≥ s (16 to 256). The visible source blocks of a query block are merged into one tile, so a query block costs
    about its own length plus ``2s`` sources, instead of most of a few large masked tiles."""
    if spec.support in ("window", "radius", "causal_window"):
        size = spec.support_size
        return (_power_of_two_at_least(4 * size, LOCAL_QUERY_BLOCK_MIN, DEFAULT_BLOCK[0]),
                _power_of_two_at_least(size, LOCAL_SOURCE_BLOCK_MIN, DEFAULT_BLOCK[1]))
    return DEFAULT_BLOCK


_NEG = -1e30  # a finite "minus infinity" for the running max, so empty rows never make NaN

# Bool masks get no gradient. Positions get one only through the kernel MLP's ``Ua (p_i − p_j)``
# (the table and the supports read them through rounding and comparisons); a float attn_mask
# is a score bias and gets ``ds``.
_NOT_DIFFERENTIABLE = ("padding",)


# --------------------------------------------------------------------------------------
# Which tiles to visit
# --------------------------------------------------------------------------------------


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _bounds(pos: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per block of ``size`` positions (the last may be shorter), the per-dim min and max position over batch and
    block: ``([blocks, P], [blocks, P])``."""
    B, N, P = pos.shape
    pad = (-N) % size

    def per_block(fill: float, reduce) -> Tensor:
        padded = torch.cat([pos, pos.new_full((B, pad, P), fill)], 1) if pad else pos
        return reduce(padded.detach().view(B, -1, size, P), (0, 2))

    return per_block(math.inf, torch.amin), per_block(-math.inf, torch.amax)


def visible_blocks(pos_q: Tensor, pos_s: Tensor, spec: KernelSpec, block: tuple[int, int]) -> Tensor | None:
    """Which source blocks can hold a pair of the support with which query block: ``[query blocks, source blocks]``
    bool (blocks of ``block = (queries, sources)`` positions, the last ones possibly shorter), from the position
    boxes of the blocks over the whole batch; None for support ``all`` (every block). On the positions' device."""
    if spec.support == "all":
        return None
    (qlo, qhi), (slo, shi) = _bounds(pos_q, block[0]), _bounds(pos_s, block[1])
    qlo, qhi, slo, shi = qlo[:, None], qhi[:, None], slo[None], shi[None]  # [queries, 1, P], [1, sources, P]
    size = spec.support_size
    if spec.support in ("causal", "causal_window"):
        ok = slo[..., 0] <= qhi[..., 0]
        if spec.support == "causal_window":
            ok &= qlo[..., 0] - shi[..., 0] <= size
        return ok
    gaps = torch.maximum(qlo - shi, slo - qhi).clamp_min(0.0)  # box distance per dim
    return gaps.amax(-1) <= size if spec.support == "window" else gaps.square().sum(-1) <= size * size


def _visible_pairs(inp: KernelInputs, spec: KernelSpec, qb: list[slice], sb: list[slice]) -> list[list[slice]]:
    """For each query block, the source slices holding every pair of the support: the source blocks whose
    position box can reach the query block's (:func:`visible_blocks`), adjacent ones merged into one slice (one
    tile instead of several)."""
    ok = visible_blocks(inp.pos_q, inp.pos_s, spec, (qb[0].stop - qb[0].start, sb[0].stop - sb[0].start))
    if ok is None:
        return [list(sb) for _ in qb]
    out = []
    for row in ok.tolist():
        runs: list[slice] = []
        for j in (j for j, visible in enumerate(row) if visible):
            if runs and runs[-1].stop == sb[j].start and spec.support != "causal":
                runs[-1] = slice(runs[-1].start, sb[j].stop)  # local supports: few blocks, one tile
            else:
                runs.append(sb[j])
        out.append(runs)
    return out


# --------------------------------------------------------------------------------------
# One tile, forward and backward (plain torch; compiled when worthwhile)
# --------------------------------------------------------------------------------------


def _tile_scores(q, k, beta, a, b, w2, mlp_w, mlp_c, bias, activation: str):
    """``(s, q·kᵀ, kernel-MLP layers)`` of a tile: ``s = β q·k/√d + w2ᵀσ(…) + bias``.

    ``bias`` holds the table term and a float mask; it is zeros when no term is present at all.
    """
    terms, qk, layers = [] if bias is None else [bias], None, None
    if q is not None:
        qk = q @ k.transpose(-1, -2)
        terms.append(qk * (beta[None, :, None, None] / math.sqrt(q.shape[-1])))
    if a is not None:
        layers = mlp_layers(a, b, mlp_w, mlp_c, activation)
        terms.append(mlp_scores(layers[0], w2))
    return sum(terms[1:], terms[0]), qk, layers


def _softmax_logits(s: Tensor, m: Tensor | None, log_d: Tensor | None) -> Tensor:
    logits = s if log_d is None else s + log_d
    return logits if m is None else logits.masked_fill(~m, float("-inf"))


def _linear_factor(m: Tensor | None, log_d: Tensor | None, w: Tensor | None) -> Tensor | float:
    """``w_j m(i,j) D(i,j)``, the factor that turns ``s`` into ``K`` in linear mode."""
    f: Tensor | float = 1.0
    if log_d is not None:
        f = f * (log_d.masked_fill(~m, 0.0).exp() if m is not None else log_d.exp())
    if w is not None:
        f = f * w
    if m is not None:
        f = f * m
    return f


def _forward_tile(mode, activation, q, k, beta, a, b, w2, mlp_w, mlp_c, bias, m, log_d, w, v, top, total, acc):
    """Fold one source block into a query block's running ``(max, normalizer, accumulator)``."""
    s, _, _ = _tile_scores(q, k, beta, a, b, w2, mlp_w, mlp_c, bias, activation)
    if mode == "linear":
        return top, total, acc + (s * _linear_factor(m, log_d, w)) @ v
    logits = _softmax_logits(s, m, log_d)
    new_top = torch.maximum(top, logits.amax(-1, keepdim=True))
    p = (logits - new_top).exp()
    if w is not None:
        p = p * w
    scale = (top - new_top).exp()
    return new_top, total * scale + p.sum(-1, keepdim=True), acc * scale + p @ v


class TileGrads(NamedTuple):
    """Gradients from one tile, but the kernel MLP's (None where not needed). ``ds`` is the score gradient, given
    whenever the kernel MLP, the offset table or a float mask needs it."""

    q: Tensor | None
    k: Tensor | None
    beta: Tensor | None
    v: Tensor | None
    weights: Tensor | None
    tau_q: Tensor | None
    tau_s: Tensor | None
    ds: Tensor | None


def _backward_tile(mode, activation, need, q, k, beta, a, b, w2, mlp_w, mlp_c, bias, m, log_d, w, v, do, lse,
                   row_dot) -> TileGrads:
    """The tile's :class:`TileGrads`. ``row_dot`` is ``Δ_i = do_i·o_i`` (softmax mode).

    The kernel MLP's gradients come from ``ds`` in a second compiled function (:func:`_mlp_backward_tile`): fused
    into this one, its ``r``-wide reductions made the loop nests of the whole tile slower than the two apart.
    """
    s, qk, _ = _tile_scores(q, k, beta, a, b, w2, mlp_w, mlp_c, bias, activation)
    dpk = do @ v.transpose(-1, -2)  # dP (softmax) or dK (linear): [B, H, nq, ns]
    if mode == "softmax":
        p_unweighted = (_softmax_logits(s, m, log_d) - lse[..., None]).exp()
        p = p_unweighted if w is None else p_unweighted * w
        ds = p * (dpk - row_dot)
        dv = p.transpose(-1, -2) @ do if "v" in need else None
        dw = (p_unweighted * (dpk - row_dot)).sum(-2) if "weights" in need else None
        dlog_d = ds
    else:
        factor = _linear_factor(m, log_d, w)
        kmat = s * factor
        ds = dpk * factor
        dv = kmat.transpose(-1, -2) @ do if "v" in need else None
        dw = (dpk * s * _linear_factor(m, log_d, None)).sum(-2) if "weights" in need else None
        dlog_d = dpk * kmat
    dq = dk = dbeta = None
    if q is not None:
        scale = beta[None, :, None, None] / math.sqrt(q.shape[-1])
        dq = (ds * scale) @ k if "q" in need else None
        dk = (ds * scale).transpose(-1, -2) @ q if "k" in need else None
        dbeta = (ds * qk).sum((0, 2, 3)) / math.sqrt(q.shape[-1]) if "beta" in need else None
    return TileGrads(
        q=dq, k=dk, beta=dbeta, v=dv, weights=dw,
        tau_q=-dlog_d.sum(-1) if "tau_q" in need else None,
        tau_s=dlog_d.sum(-2) if "tau_s" in need else None,
        ds=ds if a is not None or "table" in need or "attn_mask" in need else None,
    )


def _mlp_backward_tile(activation, a, b, w2, mlp_w, mlp_c, ds) -> MLPGrads:
    """The kernel MLP's gradients from one tile's score gradient ``ds``, ``a`` as ``[B, H, nq, r]``, ``b`` as
    ``[B, H, ns, r]`` (the activations recomputed from ``a``, ``b`` in the ``r``-first layout)."""
    grads = mlp_backward(*mlp_layers(a, b, mlp_w, mlp_c, activation), w2, mlp_w, ds)
    return grads._replace(a=grads.a.transpose(-1, -2), b=grads.b.transpose(-1, -2))


#: The query-extent and source-extent dims of the tile functions' tensor arguments, by parameter name (dynamic in
#: edge tiles; see :mod:`itnet_scale.ops.compile`): ``q [B, H, nq, d]``, ``k``/``v`` ``[B, H, ns, ·]``,
#: ``a [B, H, r, nq]``, ``b [B, H, r, ns]``, the ``[·, ·, nq, ns]`` score-shaped terms, source weights
#: ``w [B, ·, 1, ns]``, the running softmax state and output gradients ``[B, H, nq, ·]``, ``lse [B, H, nq]``.
_EXTENT_DIMS: dict[str, tuple[int, ...]] = {
    "q": (-2,), "k": (-2,), "v": (-2,), "a": (-1,), "b": (-1,), "bias": (-2, -1), "m": (-2, -1), "log_d": (-2, -1),
    "w": (-1,), "top": (-2,), "total": (-2,), "acc": (-2,), "do": (-2,), "lse": (-1,), "row_dot": (-2,),
    "ds": (-2, -1),
}
_PER_HEAD = ("beta", "w2", "mlp_w", "mlp_c")  # parameters: no batch dim
forward_tile = TileFunction(_forward_tile, _EXTENT_DIMS, _PER_HEAD)
backward_tile = TileFunction(_backward_tile, _EXTENT_DIMS, _PER_HEAD)
mlp_backward_tile = TileFunction(_mlp_backward_tile, _EXTENT_DIMS, _PER_HEAD)


class _Tile:
    """The per-tile arguments of one (query block, source block) pair."""

    def __init__(self, inp: KernelInputs, spec: KernelSpec, qs: slice, ss: slice) -> None:
        def cut(t: Tensor | None, sl: slice) -> Tensor | None:
            return None if t is None else t[:, :, sl]

        self.qs, self.ss = qs, ss
        self.q, self.k, self.a, self.b = cut(inp.q, qs), cut(inp.k, ss), cut(inp.a, qs), cut(inp.b, ss)
        self.v = inp.v[:, :, ss]
        self.beta, self.w2, self.mlp_w, self.mlp_c = inp.beta, inp.w2, inp.mlp_w, inp.mlp_c
        self.pos_weight = inp.pos_weight
        B, H = inp.v.shape[:2]
        nq, ns = qs.stop - qs.start, ss.stop - ss.start
        if inp.pos_weight is not None:
            # Ua (p_i − p_j) = Ua (p_i − c) − Ua (p_j − c) for any c: folded into a_i and b_j, the position term
            # costs O((nq + ns)·r·P) per tile instead of O(nq·ns·r·P). c is the block's first query, so the
            # shifted positions stay as small as the offsets themselves (no cancellation for long sequences).
            center = inp.pos_q[:, qs.start: qs.start + 1]
            self.rel_q, self.rel_s = inp.pos_q[:, qs] - center, inp.pos_s[:, ss] - center  # [B, n, P]
            Ua = inp.pos_weight[None]  # [1, H, r, P]
            self.a = (self.a.transpose(-1, -2) + Ua @ self.rel_q.transpose(1, 2)[:, None]).contiguous()  # [B,H,r,nq]
            self.b = (self.b.transpose(-1, -2) - Ua @ self.rel_s.transpose(1, 2)[:, None]).contiguous()
        elif self.a is not None:  # the kernel MLP's layout: r before the positions (itnet_scale.ops.kernel_mlp)
            self.a, self.b = self.a.transpose(-1, -2).contiguous(), self.b.transpose(-1, -2).contiguous()
        bias = self.table_index = None
        if inp.table is not None:
            self.table_index = table_index(offsets(inp.pos_q[:, qs], inp.pos_s[:, ss]), spec.offset_range)
            bias = table_lookup(inp.table, self.table_index)
        if inp.attn_mask is not None and inp.attn_mask.is_floating_point():
            extra = mask_block(inp.attn_mask, qs, ss)
            bias = extra.expand(B, H, nq, ns) if bias is None else bias + extra
        if bias is None and inp.q is None and inp.a is None:
            bias = inp.v.new_zeros(B, H, nq, ns)  # no term at all: s = 0
        self.bias = bias
        self.m = support_mask(inp, spec, qs, ss)
        self.log_d = decay_log(inp, qs, ss)
        self.w = source_weights(inp, ss)

    def score_args(self) -> tuple:
        """The tile functions' arguments: the position term is already inside ``a`` and ``b`` (``[B, H, r, n]``)."""
        return (self.q, self.k, self.beta, self.a, self.b, self.w2, self.mlp_w, self.mlp_c, self.bias, self.m,
                self.log_d, self.w, self.v)

    def position_grads(self, da: Tensor, db: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(dUa [H, r, P], dpos_q [B, nq, P], dpos_s [B, ns, P])`` from the gradients of the shifted ``a``, ``b``
        (the shift's centre cancels: it gets no gradient)."""
        Ua = self.pos_weight  # [H, r, P]; da [B, H, nq, r], db [B, H, ns, r]
        dUa = (da.transpose(-1, -2) @ self.rel_q[:, None] - db.transpose(-1, -2) @ self.rel_s[:, None]).sum(0)
        return dUa, (da @ Ua).sum(1), -(db @ Ua).sum(1)


Tiling = list[tuple[slice, list[slice]]]  # each query block with the source slices it visits


def _whole(qs: slice, ss: slice, block: tuple[int, int]) -> bool:
    """A full query block by a whole number of source blocks (compiled for its exact extents; see
    :mod:`itnet_scale.ops.compile`)."""
    return qs.stop - qs.start == block[0] and (ss.stop - ss.start) % block[1] == 0


def _tiling(inp: KernelInputs, spec: KernelSpec, block: tuple[int, int]) -> Tiling:
    """The tiles to visit (computed once per forward; the backward reuses them)."""
    _, _, Nq, Ns, _ = inp.shape
    qb, sb = _blocks(Nq, block[0]), _blocks(Ns, block[1])
    return list(zip(qb, _visible_pairs(inp, spec, qb, sb)))


def _forward(inp: KernelInputs, spec: KernelSpec, tiling: Tiling, block: tuple[int, int],
             use_compile: bool) -> tuple[Tensor, Tensor | None]:
    B, H, Nq, _, e = inp.shape
    out = inp.v.new_zeros(B, H, Nq, e)
    lse = inp.v.new_full((B, H, Nq), float("inf")) if spec.mode == "softmax" else None
    for qs, runs in tiling:
        nq = qs.stop - qs.start
        top = inp.v.new_full((B, H, nq, 1), _NEG)
        total = inp.v.new_zeros(B, H, nq, 1)
        acc = inp.v.new_zeros(B, H, nq, e)
        for ss in runs:
            tile = _Tile(inp, spec, qs, ss)
            top, total, acc = forward_tile(spec.mode, spec.activation, *tile.score_args(), top, total, acc,
                                           whole=_whole(qs, ss, block), compiled=use_compile)
        if spec.mode == "softmax":
            seen = total > 0
            out[:, :, qs] = torch.where(seen, acc / total.masked_fill(~seen, 1.0), 0.0)
            lse[:, :, qs] = torch.where(seen, top + total.masked_fill(~seen, 1.0).log(), float("inf"))[..., 0]
        else:
            out[:, :, qs] = acc
    return out, lse


def _backward(
    inp: KernelInputs,
    spec: KernelSpec,
    tiling: Tiling,
    block: tuple[int, int],
    use_compile: bool,
    out: Tensor,
    lse: Tensor | None,
    dout: Tensor,
    need: set[str],
) -> dict[str, Tensor]:
    """Gradients of the inputs named in ``need``, recomputing each tile's score."""
    grads = {n: torch.zeros_like(getattr(inp, n)) for n in need}
    row_dot = (dout * out).sum(-1, keepdim=True) if spec.mode == "softmax" else None
    need_key = tuple(sorted(need))
    for qs, runs in tiling:
        do = dout[:, :, qs]
        lse_q = None if lse is None else lse[:, :, qs]
        row_dot_q = None if row_dot is None else row_dot[:, :, qs]
        for ss in runs:
            tile, whole = _Tile(inp, spec, qs, ss), _whole(qs, ss, block)
            tile_grads = backward_tile(spec.mode, spec.activation, need_key, *tile.score_args(), do, lse_q, row_dot_q,
                                       whole=whole, compiled=use_compile)
            got = tile_grads._asdict()
            got["table"] = got["attn_mask"] = got.pop("ds")  # the score gradient feeds the table and a float mask
            if tile.a is not None:
                got.update(mlp_backward_tile(spec.activation, tile.a, tile.b, tile.w2, tile.mlp_w, tile.mlp_c,
                                             tile_grads.ds, whole=whole, compiled=use_compile)._asdict())
            if tile.pos_weight is not None:  # da, db come back whatever is needed: they carry the position term
                got["pos_weight"], got["pos_q"], got["pos_s"] = tile.position_grads(got["a"], got["b"])
            for name in need:
                if got.get(name) is not None:
                    _ACCUMULATE[name](grads[name], got[name], tile)
    return grads


# How one tile's gradient adds into the whole input's: ``(total, tile gradient, tile)``.
def _add_queries(total: Tensor, g: Tensor, tile: _Tile) -> None:
    total[:, :, tile.qs] += g  # [B, H, Nq, ·]


def _add_sources(total: Tensor, g: Tensor, tile: _Tile) -> None:
    total[:, :, tile.ss] += g  # [B, H, Ns, ·]


def _add_query_positions(total: Tensor, g: Tensor, tile: _Tile) -> None:
    total[:, tile.qs] += g  # [B, Nq, P]


def _add_source_positions(total: Tensor, g: Tensor, tile: _Tile) -> None:
    total[:, tile.ss] += g  # [B, Ns, P]


def _add_weights(total: Tensor, g: Tensor, tile: _Tile) -> None:
    if total.dim() == 2:  # shared by the heads: [B, Ns]
        total[:, tile.ss] += g.sum(1)
    else:  # per head: [B, H, Ns]
        total[:, :, tile.ss] += g


def _add_parameter(total: Tensor, g: Tensor, tile: _Tile) -> None:
    total += g


def _add_mask(total: Tensor, ds: Tensor, tile: _Tile) -> None:
    """A float ``attn_mask`` is a score bias: its gradient is ``ds``."""
    if total.dim() == 4:
        total[:, :, tile.qs, tile.ss] += ds
    else:
        total[tile.qs, tile.ss] += ds.sum((0, 1))


def _add_table(total: Tensor, ds: Tensor, tile: _Tile) -> None:
    """``dt[h, idx(δ_ij)] += ds_ij`` over the tile's pairs whose offset lies inside the table."""
    idx, inside = tile.table_index
    contrib = (ds * inside[:, None].to(ds.dtype)).transpose(0, 1).reshape(total.shape[0], -1)  # [H, B·nq·ns]
    total.index_add_(1, idx.reshape(-1), contrib)


_ACCUMULATE: dict[str, Callable[[Tensor, Tensor, _Tile], None]] = {
    "q": _add_queries, "a": _add_queries, "tau_q": _add_queries,
    "k": _add_sources, "b": _add_sources, "v": _add_sources, "tau_s": _add_sources,
    "pos_q": _add_query_positions, "pos_s": _add_source_positions, "weights": _add_weights,
    "beta": _add_parameter, "w2": _add_parameter, "mlp_w": _add_parameter, "mlp_c": _add_parameter,
    "pos_weight": _add_parameter, "table": _add_table, "attn_mask": _add_mask,
}


class _TiledIntegralTransform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: KernelSpec, block: tuple[int, int], names: tuple[str, ...], *tensors: Tensor):
        inp = KernelInputs(**dict(zip(names, tensors)))
        tiling, use_compile = _tiling(inp, spec, block), compile_wanted(inp.v, block)
        out, lse = _forward(inp, spec, tiling, block, use_compile)
        ctx.spec, ctx.tiling, ctx.block, ctx.use_compile, ctx.names = spec, tiling, block, use_compile, names
        ctx.present = [t is not None for t in tensors]
        ctx.save_for_backward(*[t for t in tensors if t is not None], out, lse)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        saved = list(ctx.saved_tensors)
        out, lse = saved[-2], saved[-1]
        it = iter(saved[:-2])
        tensors = [next(it) if p else None for p in ctx.present]
        inp = KernelInputs(**dict(zip(ctx.names, tensors)))
        need = {n for n, t, g in zip(ctx.names, tensors, ctx.needs_input_grad[3:])
                if g and t is not None and n not in _NOT_DIFFERENTIABLE}
        if inp.pos_weight is None:
            need -= {"pos_q", "pos_s"}
        grads = _backward(inp, ctx.spec, ctx.tiling, ctx.block, ctx.use_compile, out, lse, dout.contiguous(), need)
        return (None, None, None, *[grads.get(n) for n in ctx.names])


def integral_transform_tiled(
    inp: KernelInputs, spec: KernelSpec, block_size: tuple[int, int] | None = None
) -> Tensor:
    """Exact ``Σ_j K(i,j) v_j`` in ``[bq, bs]`` tiles: ``[B, H, Nq, e]``. See the module docstring."""
    block = tuple(block_size or default_block(spec))
    if len(block) != 2 or min(block) < 1:
        raise ValueError(f"block_size must be two positive ints (queries, sources), got {block_size}")
    names = tuple(inp.names())
    return _TiledIntegralTransform.apply(spec, block, names, *inp.tensors())
