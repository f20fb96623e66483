"""The low-rank integrator from the exact kernel's inputs: features, then the form the backend names.

A layer's feature maps turn its :class:`~itnet_scale.ops.KernelInputs` into ``φ, ψ`` (:data:`FeatureMapFn`); source
weights and padding fold into per-head weights; then ``reference`` runs :mod:`.naive` and ``torch`` runs
:mod:`.chunk`, or :func:`.recurrent.lowrank_step` for a single causal position (streaming).

A causal pass longer than :data:`SEGMENT` positions runs in segments of that length, the state carried from one to
the next, with features computed per segment: the same numbers as one pass (``τ`` is re-counted from each
segment's start), but no temporary grows with the whole sequence. On CPU a tensor past glibc's mmap threshold
comes as fresh pages at every allocation, and their faults made a whole-sequence pass grow faster than ``N``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.lowrank.chunk import lowrank_chunk
from itnet_scale.ops.lowrank.naive import lowrank_kernel_matrix, lowrank_naive
from itnet_scale.ops.lowrank.recurrent import lowrank_step
from itnet_scale.ops.lowrank.spec import FeatureMapFn, LowRankInputs, check_lowrank_inputs
from itnet_scale.ops.settings import LowRank, resolve_backend
from itnet_scale.ops.spec import KernelInputs, KernelSpec, check_sequence_order

SEGMENT = 8192  # positions per causal pass; longer sequences carry the state from segment to segment
LOWRANK_SUPPORTS = ("all", "causal")


def check_lowrank_support(spec: KernelSpec) -> None:
    """``ValueError`` unless the low-rank integrator can integrate ``spec``'s support."""
    if spec.support not in LOWRANK_SUPPORTS:
        raise ValueError(f"the lowrank integrator integrates support 'all' or 'causal', got {spec.support!r}; "
                         "use the exact integrator for windowed supports")


def lowrank_inputs(inp: KernelInputs, feature_map: FeatureMapFn) -> LowRankInputs:
    """Features ``φ, ψ`` of ``inp``, with source weights per head and padding folded into them."""
    B, H, _, Ns, _ = inp.shape
    w = inp.weights
    if w is not None and w.dim() == 2:
        w = w[:, None].expand(B, H, Ns)
    if inp.padding is not None:
        keep = (~inp.padding)[:, None].to(inp.v.dtype)
        w = keep.expand(B, H, Ns) if w is None else w * keep
    phi, psi = feature_map(inp)
    return LowRankInputs(phi, psi, inp.v, w, inp.tau_q)


def lowrank_kernel(inp: KernelInputs, spec: KernelSpec, feature_map: FeatureMapFn) -> Tensor:
    """The kernel the low-rank integrator applies, ``[B, H, Nq, Ns]`` (materialized; to fit and inspect feature
    maps against the exact :func:`itnet_scale.ops.kernel_matrix`)."""
    check_lowrank_support(spec)
    return lowrank_kernel_matrix(lowrank_inputs(inp, feature_map), causal=spec.causal,
                                 normalize=spec.mode == "softmax")


def integrate_lowrank(inp: KernelInputs, spec: KernelSpec, setting: LowRank, feature_map: FeatureMapFn,
                      initial_state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``(out [B, H, Nq, e], final state [B, H, R, e(+1)] or None)``: see the module doc. The state exists for
    causal passes; ``initial_state`` is the one a previous piece of the sequence left."""
    check_lowrank_support(spec)
    if inp.attn_mask is not None:
        raise ValueError("the lowrank integrator takes no attn_mask (it never forms pairs); use padding_mask or "
                         "weights, or the exact integrator")
    if spec.causal:
        check_sequence_order(inp.pos_q, "the lowrank integrator")
    backend = resolve_backend(setting.backend)
    N = inp.shape[3]
    if spec.causal and backend == "torch" and N > SEGMENT and inp.shape[2] == N:
        state, outs = initial_state, []
        for start in range(0, N, SEGMENT):
            out, state = _one_pass(_segment(inp, start, min(start + SEGMENT, N)), spec, setting, backend,
                                   feature_map, state)
            outs.append(out)
        return torch.cat(outs, 2), state
    return _one_pass(inp, spec, setting, backend, feature_map, initial_state)


def _one_pass(inp: KernelInputs, spec: KernelSpec, setting: LowRank, backend: str, feature_map: FeatureMapFn,
              initial_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
    lr = lowrank_inputs(inp, feature_map)
    normalize = spec.mode == "softmax"
    check_lowrank_inputs(lr, spec.causal, normalize, initial_state)
    if spec.causal and inp.shape[3] == 1:  # one position: the recurrent step (streaming)
        out, state = lowrank_step(initial_state, lr.phi[:, :, 0], lr.psi[:, :, 0], lr.v[:, :, 0],
                                  normalize=normalize, weight=None if lr.weights is None else lr.weights[:, :, 0],
                                  decay=None if lr.tau is None else lr.tau[:, :, 0])
        return out[:, :, None], state
    if backend == "reference":
        return lowrank_naive(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state)
    return lowrank_chunk(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state,
                         chunk_size=setting.chunk_size)


def _segment(inp: KernelInputs, start: int, stop: int) -> KernelInputs:
    """Positions ``start:stop`` of a causal self-transform (queries and sources alike), ``τ`` counted from the
    position before ``start`` (what the carried state expects; :mod:`.spec`)."""
    def cut(t: Tensor | None, dim: int) -> Tensor | None:
        return None if t is None else t.narrow(dim, start, stop - start)

    tau = cut(inp.tau_q, 2)
    if tau is not None and start > 0:
        tau = tau - inp.tau_q[:, :, start - 1: start]
    weights = None if inp.weights is None else cut(inp.weights, inp.weights.dim() - 1)
    return KernelInputs(
        v=cut(inp.v, 2), pos_q=cut(inp.pos_q, 1), pos_s=cut(inp.pos_s, 1), q=cut(inp.q, 2), k=cut(inp.k, 2),
        beta=inp.beta, a=cut(inp.a, 2), b=cut(inp.b, 2), pos_weight=inp.pos_weight, mlp_w=inp.mlp_w,
        mlp_c=inp.mlp_c, w2=inp.w2, table=inp.table, tau_q=tau, tau_s=tau, weights=weights,
        padding=cut(inp.padding, 1))
