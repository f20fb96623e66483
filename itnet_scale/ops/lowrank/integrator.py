"""The low-rank integrator from the exact kernel's inputs: features, then the form the backend names.

A layer's feature maps turn its :class:`~itnet_scale.ops.KernelInputs` into ``φ, ψ`` (:data:`FeatureMapFn`); source
weights and padding fold into per-head weights; then ``reference`` runs :mod:`.naive`, ``torch`` runs :mod:`.chunk`
and ``triton`` the same with its causal scan in Triton (:func:`lowrank_backend` says when), or
:func:`.recurrent.lowrank_step` for a single causal position (streaming).

A causal self-transform longer than :data:`SEGMENT` positions runs in segments of that length, the state carried
from one to the next, with features computed per segment: the same numbers as one pass (``τ`` is re-counted from
each segment's start), but the feature maps' temporaries stay small. On CPU a tensor past glibc's mmap threshold
comes as fresh pages at every allocation, and their faults made a whole-sequence pass grow faster than ``N``. (The
layer's projections are whole-sequence tensors; at N = 65536 they cost about 7% of a forward + backward.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.lowrank.chunk import lowrank_chunk
from itnet_scale.ops.lowrank.naive import lowrank_kernel_matrix, lowrank_naive
from itnet_scale.ops.lowrank.recurrent import lowrank_step
from itnet_scale.ops.lowrank.spec import FeatureMapFn, LowRankInputs, check_lowrank_inputs
from itnet_scale.ops.settings import LowRank, requested_backend
from itnet_scale.ops.spec import KernelInputs, KernelSpec, check_sequence_order
from itnet_scale.ops.triton import environment_problem, interpreting, scan_unsupported

SEGMENT = 8192  # positions per causal pass; longer sequences carry the state from segment to segment
LOWRANK_SUPPORTS = ("all", "causal")


def check_lowrank_support(spec: KernelSpec) -> None:
    """``ValueError`` unless the low-rank integrator can integrate ``spec``'s support."""
    if spec.support not in LOWRANK_SUPPORTS:
        raise ValueError(f"the lowrank integrator integrates support 'all' or 'causal', got {spec.support!r}; "
                         "use the exact integrator for windowed supports")


def lowrank_backend(inp: LowRankInputs, causal: bool, initial_state: Tensor | None, backend: str) -> str:
    """The backend that computes this low-rank call: ``reference``, ``torch`` or ``triton``.

    ``backend`` (or what ``ITNET_BACKEND`` forces) ``auto`` picks ``triton`` for a causal pass on CUDA tensors whose
    features the scan kernels compute (:func:`~itnet_scale.ops.triton.scan_unsupported`), ``torch`` otherwise;
    ``triton`` runs the kernels where they compute the call and ``torch`` elsewhere (a non-causal pass is two
    matmuls), and is a ``RuntimeError`` naming the cause where the kernels cannot run at all (CPU tensors without
    Triton's interpreter) — as the exact integrator's :func:`~itnet_scale.ops.exact.exact_backend`.
    """
    requested = requested_backend(backend)
    if requested in ("reference", "torch"):
        return requested
    covered = causal and not scan_unsupported((inp.phi, inp.psi, inp.v, inp.weights, initial_state))
    if requested == "triton":
        problem = environment_problem(inp.v.device)
        if problem:
            raise RuntimeError(problem)
        return "triton" if covered else "torch"
    return "triton" if covered and inp.v.is_cuda and not interpreting() else "torch"


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
    backend = requested_backend(setting.backend)
    N = inp.shape[3]
    long_self_transform = spec.causal and N > SEGMENT and inp.pos_s is inp.pos_q
    if long_self_transform and backend != "reference":
        state, outs = initial_state, []
        for segment in _segments(inp, SEGMENT):
            out, state = _one_pass(segment, spec, setting, backend, feature_map, state)
            outs.append(out)
        return torch.cat(outs, 2), state
    return _one_pass(inp, spec, setting, backend, feature_map, initial_state)


def _one_pass(inp: KernelInputs, spec: KernelSpec, setting: LowRank, backend: str, feature_map: FeatureMapFn,
              initial_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
    lr = lowrank_inputs(inp, feature_map)
    normalize = spec.mode == "softmax"
    check_lowrank_inputs(lr, spec.causal, normalize, initial_state)
    backend = lowrank_backend(lr, spec.causal, initial_state, backend)
    if spec.causal and inp.shape[3] == 1:  # one position: the recurrent step (streaming)
        out, state = lowrank_step(initial_state, lr.phi[:, :, 0], lr.psi[:, :, 0], lr.v[:, :, 0],
                                  normalize=normalize, weight=None if lr.weights is None else lr.weights[:, :, 0],
                                  decay=None if lr.tau is None else lr.tau[:, :, 0])
        return out[:, :, None], state
    if backend == "reference":
        return lowrank_naive(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state)
    return lowrank_chunk(lr, causal=spec.causal, normalize=normalize, initial_state=initial_state,
                         chunk_size=setting.chunk_size, scan=backend)


def _segments(inp: KernelInputs, size: int) -> list[KernelInputs]:
    """A causal self-transform cut into segments of ``size`` positions (queries and sources alike), each one's ``τ``
    counted from the position before it (what the carried state expects; :mod:`.spec`).

    One ``split`` per tensor: its backward is one concatenation, where a slice per segment would make backward fill
    a full-length zero gradient per segment (which made long passes about 12% slower)."""
    def pieces(t: Tensor | None, dim: int) -> list[Tensor | None]:
        return [None] * count if t is None else list(t.split(size, dim))

    count = -(-inp.shape[3] // size)
    taus = pieces(inp.tau_q, 2)
    for i in range(count - 1, 0, -1):  # from the end, so each segment is re-based on the original one before it
        if taus[i] is not None:
            taus[i] = taus[i] - taus[i - 1][:, :, -1:]
    weights = pieces(inp.weights, None if inp.weights is None else inp.weights.dim() - 1)
    v, pos_q, q, k, a, b, padding = (pieces(inp.v, 2), pieces(inp.pos_q, 1), pieces(inp.q, 2), pieces(inp.k, 2),
                                     pieces(inp.a, 2), pieces(inp.b, 2), pieces(inp.padding, 1))
    return [KernelInputs(v=v[i], pos_q=pos_q[i], pos_s=pos_q[i], q=q[i], k=k[i], beta=inp.beta, a=a[i], b=b[i],
                         pos_weight=inp.pos_weight, mlp_w=inp.mlp_w, mlp_c=inp.mlp_c, w2=inp.w2, table=inp.table,
                         tau_q=taus[i], tau_s=taus[i], weights=weights[i], padding=padding[i])
            for i in range(count)]
