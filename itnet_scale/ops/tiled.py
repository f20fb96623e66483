"""Tiled exact integrator: query blocks × source blocks, online normalization.

Forward walks source blocks for each query block, keeping a running max ``M``, normalizer
``L`` and accumulator (as FlashAttention does), so no more than one ``[B, H, bq, bs, r]``
tile of the kernel MLP is alive at a time. It saves only the output and the log-normalizer
``lse = M + log L``; backward recomputes each tile's score ``s`` and pushes the score
gradient through :func:`pair_scores` with autograd, tile by tile. Memory is
``O(N·(d + r))`` plus one tile, never ``O(N²·r)``.

Tiles that no pair of the support can reach (causal, windows, radius) are skipped using the
bounding boxes of the block positions.

Gradients of the score (softmax mode, ``P = K``)::

    dP_ij = do_i·v_j        Δ_i = do_i·o_i        ds_ij = P_ij (dP_ij − Δ_i)
    dv_j = Σ_i P_ij do_i    dw_j = Σ_i (P_ij / w_j)(dP_ij − Δ_i)    dτ_j = Σ_i ds_ij

and in linear mode (``K_ij = w_j m s_ij D_ij``)::

    dK_ij = do_i·v_j        ds_ij = dK_ij w_j m D_ij     dlog D_ij = dK_ij K_ij
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from itnet_scale.ops.spec import (
    KernelInputs,
    KernelSpec,
    decay_log,
    pair_scores,
    source_weights,
    support_mask,
)

DEFAULT_BLOCK = (256, 256)
_NEG = -1e30  # a finite "minus infinity" for the running max, so empty rows never make NaN

# Inputs whose gradient comes from the score s(i,j), and how they are sliced per tile.
_SCORE_QUERY = ("q", "a")
_SCORE_SOURCE = ("k", "b")
_SCORE_PARAMS = ("beta", "mlp_w", "mlp_c", "w2", "table")
# Positions and masks enter only through comparisons and rounding: no gradient.
_NOT_DIFFERENTIABLE = ("pos_q", "pos_s", "padding", "attn_mask")


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _bounds(pos: Tensor, blocks: list[slice]) -> list[tuple[list[float], list[float]]]:
    """Per block, the per-dim min and max position over batch and block (host lists)."""
    lo = torch.stack([pos[:, s].amin((0, 1)) for s in blocks]).tolist()
    hi = torch.stack([pos[:, s].amax((0, 1)) for s in blocks]).tolist()
    return list(zip(lo, hi))


def _visible_pairs(inp: KernelInputs, spec: KernelSpec, qb: list[slice], sb: list[slice]) -> list[list[int]]:
    """For each query block, the source blocks that hold at least one pair in the support."""
    if spec.support == "all":
        return [list(range(len(sb))) for _ in qb]
    qbox, sbox = _bounds(inp.pos_q, qb), _bounds(inp.pos_s, sb)
    size = spec.support_size
    out = []
    for qlo, qhi in qbox:
        keep = []
        for j, (slo, shi) in enumerate(sbox):
            gaps = [max(0.0, a - d, c - b) for a, b, c, d in zip(qlo, qhi, slo, shi)]  # box distance per dim
            if spec.support in ("causal", "causal_window"):
                ok = slo[0] <= qhi[0] and (spec.support == "causal" or qlo[0] - shi[0] <= size)
            elif spec.support == "window":
                ok = max(gaps) <= size
            else:  # radius
                ok = math.fsum(g * g for g in gaps) <= size * size
            if ok:
                keep.append(j)
        out.append(keep)
    return out


def _tile(inp: KernelInputs, spec: KernelSpec, qs: slice, ss: slice) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(s, m, log D)`` of one tile."""
    return pair_scores(inp, spec, qs, ss), support_mask(inp, spec, qs, ss), decay_log(inp, qs, ss)


def _softmax_logits(s: Tensor, m: Tensor | None, log_d: Tensor | None) -> Tensor:
    logits = s if log_d is None else s + log_d
    return logits if m is None else logits.masked_fill(~m, float("-inf"))


def _linear_factor(m: Tensor | None, log_d: Tensor | None, w: Tensor | None, like: Tensor) -> Tensor:
    """``w_j m(i,j) D(i,j)``, the factor that turns ``s`` into ``K`` in linear mode."""
    f = like.new_ones(())
    if log_d is not None:
        f = f * (log_d.masked_fill(~m, 0.0).exp() if m is not None else log_d.exp())
    if w is not None:
        f = f * w
    if m is not None:
        f = f * m
    return f


def _forward(inp: KernelInputs, spec: KernelSpec, block: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    B, H, Nq, Ns, e = inp.shape
    qb, sb = _blocks(Nq, block[0]), _blocks(Ns, block[1])
    visible = _visible_pairs(inp, spec, qb, sb)
    out = inp.v.new_zeros(B, H, Nq, e)
    lse = inp.v.new_full((B, H, Nq), float("inf")) if spec.mode == "softmax" else None
    for qs, keep in zip(qb, visible):
        nq = qs.stop - qs.start
        if spec.mode == "softmax":
            top = inp.v.new_full((B, H, nq, 1), _NEG)
            total = inp.v.new_zeros(B, H, nq, 1)
        acc = inp.v.new_zeros(B, H, nq, e)
        for j in keep:
            ss = sb[j]
            s, m, log_d = _tile(inp, spec, qs, ss)
            w = source_weights(inp, ss)
            if spec.mode == "softmax":
                logits = _softmax_logits(s, m, log_d)
                new_top = torch.maximum(top, logits.amax(-1, keepdim=True))
                p = (logits - new_top).exp()
                if w is not None:
                    p = p * w
                scale = (top - new_top).exp()
                total = total * scale + p.sum(-1, keepdim=True)
                acc = acc * scale + p @ inp.v[:, :, ss]
                top = new_top
            else:
                acc = acc + (s * _linear_factor(m, log_d, w, s)) @ inp.v[:, :, ss]
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
    block: tuple[int, int],
    out: Tensor,
    lse: Tensor | None,
    dout: Tensor,
    need: set[str],
) -> dict[str, Tensor]:
    """Gradients of the inputs named in ``need``, recomputing each tile's score."""
    _, _, Nq, Ns, _ = inp.shape
    qb, sb = _blocks(Nq, block[0]), _blocks(Ns, block[1])
    visible = _visible_pairs(inp, spec, qb, sb)
    grads = {n: torch.zeros_like(getattr(inp, n)) for n in need}
    # Parameters shared by all tiles: one detached leaf each, gradients accumulate on it.
    params = {n: getattr(inp, n).detach().requires_grad_(n in need) for n in _SCORE_PARAMS
              if getattr(inp, n) is not None}
    delta = (dout * out).sum(-1, keepdim=True) if spec.mode == "softmax" else None

    for qs, keep in zip(qb, visible):
        do = dout[:, :, qs]
        qleaf = {n: getattr(inp, n)[:, :, qs].detach().requires_grad_(n in need) for n in _SCORE_QUERY
                 if getattr(inp, n) is not None}
        for j in keep:
            ss = sb[j]
            sleaf = {n: getattr(inp, n)[:, :, ss].detach().requires_grad_(n in need) for n in _SCORE_SOURCE
                     if getattr(inp, n) is not None}
            leaves = {**params, **qleaf, **sleaf}
            # The tile's own inputs, with block-sized leaves that autograd differentiates s through.
            tile = KernelInputs(
                v=inp.v[:, :, ss], pos_q=inp.pos_q[:, qs], pos_s=inp.pos_s[:, ss],
                attn_mask=None if inp.attn_mask is None else inp.attn_mask[..., qs, ss], **leaves,
            )
            with torch.enable_grad():
                s = pair_scores(tile, spec)
            m, log_d = support_mask(inp, spec, qs, ss), decay_log(inp, qs, ss)
            w = source_weights(inp, ss)
            v = inp.v[:, :, ss]
            dk = do @ v.transpose(-1, -2)  # dP (softmax) or dK (linear): [B, H, nq, ns]
            sd = s.detach()
            if spec.mode == "softmax":
                p_unweighted = (_softmax_logits(sd, m, log_d) - lse[:, :, qs, None]).exp()
                p = p_unweighted if w is None else p_unweighted * w
                ds = p * (dk - delta[:, :, qs])
                if "v" in need:
                    grads["v"][:, :, ss] += p.transpose(-1, -2) @ do
                if "weights" in need:
                    _add_weight_grad(grads["weights"], p_unweighted * (dk - delta[:, :, qs]), ss)
                dlog_d = ds
            else:
                factor = _linear_factor(m, log_d, w, sd)
                kmat = sd * factor
                ds = dk * factor
                if "v" in need:
                    grads["v"][:, :, ss] += kmat.transpose(-1, -2) @ do
                if "weights" in need:
                    _add_weight_grad(grads["weights"], dk * sd * _linear_factor(m, log_d, None, sd), ss)
                dlog_d = dk * kmat
            if log_d is not None:
                if "tau_s" in need:
                    grads["tau_s"][:, :, ss] += dlog_d.sum(-2)
                if "tau_q" in need:
                    grads["tau_q"][:, :, qs] -= dlog_d.sum(-1)
            wanted = [(n, t) for n, t in leaves.items() if n in need]
            if wanted and s.requires_grad:
                got = torch.autograd.grad(s, [t for _, t in wanted], ds, allow_unused=True)
                for (n, _), g in zip(wanted, got):
                    if g is None:
                        continue
                    if n in _SCORE_QUERY:
                        grads[n][:, :, qs] += g
                    elif n in _SCORE_SOURCE:
                        grads[n][:, :, ss] += g
                    else:
                        grads[n] += g
    return grads


def _add_weight_grad(gw: Tensor, per_pair: Tensor, ss: slice) -> None:
    """Accumulate ``Σ_i`` of a ``[B, H, nq, ns]`` tile into ``[B, Ns]`` or ``[B, H, Ns]``."""
    g = per_pair.sum(-2)
    if gw.dim() == 2:
        g = g.sum(1)
        gw[:, ss] += g
    else:
        gw[:, :, ss] += g


class _TiledIntegralTransform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: KernelSpec, block: tuple[int, int], names: tuple[str, ...], *tensors: Tensor):
        inp = KernelInputs(**dict(zip(names, tensors)))
        out, lse = _forward(inp, spec, block)
        ctx.spec, ctx.block, ctx.names = spec, block, names
        ctx.present = [t is not None for t in tensors]
        ctx.save_for_backward(*[t for t in tensors if t is not None], out, lse)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        saved = list(ctx.saved_tensors)
        out, lse = saved[-2], saved[-1]
        it = iter(saved[:-2])
        tensors = [next(it) if p else None for p in ctx.present]
        need = {n for n, t, g in zip(ctx.names, tensors, ctx.needs_input_grad[3:])
                if g and t is not None and n not in _NOT_DIFFERENTIABLE}
        inp = KernelInputs(**dict(zip(ctx.names, tensors)))
        grads = _backward(inp, ctx.spec, ctx.block, out, lse, dout.contiguous(), need)
        return (None, None, None, *[grads.get(n) for n in ctx.names])


def integral_transform_tiled(
    inp: KernelInputs, spec: KernelSpec, block_size: tuple[int, int] | None = None
) -> Tensor:
    """Exact ``Σ_j K(i,j) v_j`` in ``[bq, bs]`` tiles: ``[B, H, Nq, e]``. See the module docstring."""
    block = tuple(block_size or DEFAULT_BLOCK)
    if len(block) != 2 or min(block) < 1:
        raise ValueError(f"block_size must be two positive ints (queries, sources), got {block_size}")
    names = tuple(inp.names())
    return _TiledIntegralTransform.apply(spec, block, names, *inp.tensors())
