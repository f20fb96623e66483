"""The Monte Carlo integrator: the exact kernel evaluated on sampled sources only.

For a query block with sources ``j_1 … j_M`` and importance factors ``c_m = 1/(M·q(j_m))``::

    linear:   out_i = Σ_m c_m K(i, j_m) v_{j_m}                                   (unbiased)
    softmax:  out_i = Σ_m c_m w m e^{s} D v / Σ_m c_m w m e^{s} D   at (i, j_m)     (self-normalized)

which is the exact integral over the sampled set with source weights ``w_j·c_j``. So the blocks
are laid side by side in the batch dimension (``[B·nb, H, bq, ·]`` queries against
``[B·nb, H, M, ·]`` gathered sources) and handed to the exact integrator: the reference
backend (every pair materialized — the naive form) or the tiled one (fused tiles, recomputing
backward). Gradients reach the gathered sources through ``torch.gather``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.exact import integrate_exact
from itnet_scale.ops.montecarlo.proposals import Samples
from itnet_scale.ops.reference import kernel_matrix
from itnet_scale.ops.settings import Exact, resolve_backend
from itnet_scale.ops.spec import KernelInputs, KernelSpec

PAIRS_PER_CALL = 1 << 20  # query-source pairs (per head) handed to the exact backend in one call


def _queries(t: Tensor | None, nb: int, bq: int, head_dim: bool = True) -> Tensor | None:
    """``[B, H, Nq, c]`` (or ``[B, Nq, c]``) → ``[B·nb, H, bq, c]``, padding the last block with the last query."""
    if t is None:
        return None
    n_axis = 2 if head_dim else 1
    Nq = t.shape[n_axis]
    pad = nb * bq - Nq
    if pad:
        last = t.narrow(n_axis, Nq - 1, 1)
        t = torch.cat([t, last.expand(*t.shape[:n_axis], pad, *t.shape[n_axis + 1:])], n_axis)
    t = t.unflatten(n_axis, (nb, bq))                        # [B, H, nb, bq, …] / [B, nb, bq, …]
    if head_dim:
        t = t.transpose(1, 2)                                # [B, nb, H, bq, …]
    return t.flatten(0, 1)


def _sources(t: Tensor | None, index: Tensor, head_dim: bool = True) -> Tensor | None:
    """Gather the sampled sources: ``[B, H, Ns, …]`` (or ``[B, Ns, …]``) with ``index [B, nb, M]`` →
    ``[B·nb, H, M, …]`` (or ``[B·nb, M, …]``).

    Rows are copied whole with ``index_select`` from a ``[B·Ns, H·c]`` view (the layer's per-head
    tensors are views of ``[B, Ns, H, c]`` memory), which is several times faster than an
    element-wise ``gather`` over an expanded index.
    """
    if t is None:
        return None
    B, nb, M = index.shape
    rows = (index + torch.arange(B, device=index.device)[:, None, None] * t.shape[2 if head_dim else 1]).flatten()
    if not head_dim:
        return t.reshape(B * t.shape[1], -1).index_select(0, rows).view(B * nb, M, *t.shape[2:])
    H, rest = t.shape[1], t.shape[3:]
    by_source = t.movedim(1, 2).reshape(B * t.shape[2], -1)                   # [B·Ns, H·c]
    return by_source.index_select(0, rows).view(B * nb, M, H, *rest).movedim(2, 1)


def sampled_inputs(inp: KernelInputs, samples: Samples, bq: int) -> KernelInputs:
    """The block-batched exact problem whose integral is the Monte Carlo estimate."""
    B, H, Nq, Ns, _ = inp.shape
    index = samples.index
    nb, M = index.shape[1], index.shape[2]
    scale = samples.scale.to(inp.v.dtype).reshape(B * nb, M)
    w = inp.weights
    if w is None:
        weights = scale
    elif w.dim() == 2:
        weights = _sources(w[..., None], index, head_dim=False)[..., 0] * scale
    else:
        weights = _sources(w[..., None], index)[..., 0] * scale[:, None]
    out = KernelInputs(
        v=_sources(inp.v, index),
        pos_q=_queries(inp.pos_q, nb, bq, head_dim=False),
        pos_s=_sources(inp.pos_s, index, head_dim=False),
        q=_queries(inp.q, nb, bq), k=_sources(inp.k, index), beta=inp.beta,
        a=_queries(inp.a, nb, bq), b=_sources(inp.b, index),
        pos_weight=inp.pos_weight, mlp_w=inp.mlp_w, mlp_c=inp.mlp_c, w2=inp.w2, table=inp.table,
        weights=weights,
    )
    if inp.tau_q is not None:
        out.tau_q = _queries(inp.tau_q[..., None], nb, bq)[..., 0]
        out.tau_s = _sources(inp.tau_s[..., None], index)[..., 0]
    if inp.padding is not None:
        out.padding = _sources(inp.padding[..., None], index, head_dim=False)[..., 0]
    if inp.attn_mask is not None:
        mask = inp.attn_mask if inp.attn_mask.dim() == 4 else inp.attn_mask.expand(B, H, Nq, Ns)
        rows = _queries(mask, nb, bq)                                               # [B·nb, H, bq, Ns]
        cols = index.reshape(B * nb, 1, 1, M).expand(-1, H, bq, -1)
        out.attn_mask = rows.gather(3, cols)
    return out


def integral_transform_montecarlo(
    inp: KernelInputs,
    spec: KernelSpec,
    samples: Samples,
    block_queries: int,
    backend: str = "auto",
    sampled: KernelInputs | None = None,
) -> Tensor:
    """``Σ_j K(i,j) v_j`` estimated from ``samples`` (one draw per block of ``block_queries`` queries):
    ``[B, H, Nq, e]``. ``backend`` as for the exact integrator (``reference`` is the naive form);
    ``sampled`` is :func:`sampled_inputs`' result when the caller already built it."""
    B, H, Nq, _, e = inp.shape
    nb, M = samples.index.shape[1:]
    if nb != -(-Nq // block_queries) or samples.index.shape[0] != B:
        raise ValueError(f"samples are for {samples.index.shape[0]}×{nb} blocks, but {B} batch × {Nq} queries "
                         f"make {-(-Nq // block_queries)} blocks of {block_queries}")
    if sampled is None:
        sampled = sampled_inputs(inp, samples, block_queries)
    exact = Exact(backend=backend, block_size=None if resolve_backend(backend) == "reference" else (block_queries, M))
    # A few blocks per call: the tiled form's tile spans the whole batch, so one call over all
    # B·nb blocks would hold B·nb·bq·M·r kernel-MLP values at once (1 GiB at N = 16k).
    rows = max(1, PAIRS_PER_CALL // (block_queries * M))
    outs = [integrate_exact(part, spec, exact) for part in sampled.split(rows)]    # [rows, H, bq, e] each
    out = torch.cat(outs, 0)
    return out.view(B, nb, H, block_queries, e).transpose(1, 2).flatten(2, 3)[:, :, :Nq]


def select_blocks(sampled: KernelInputs, rows: Tensor) -> KernelInputs:
    """The block-batched problem restricted to some of its ``B·nb`` rows."""
    kept = {n: (t if t is None or n in KernelInputs.PARAMETERS else t.index_select(0, rows))
            for n, t in zip(sampled.names(), sampled.tensors())}
    return KernelInputs(**kept)


def proposal_loss(sampled: KernelInputs, spec: KernelSpec, samples: Samples, rows: Tensor) -> Tensor:
    """Cross-entropy of the proposal against the kernel it should follow, on the blocks ``rows`` (of ``B·nb``).

    Target per block: ``π_m = mean_{i, h} K̂_h(i, j_m)``, the self-normalized kernel of the block's
    queries on its samples (detached) — an importance-sampled estimate of the block-averaged
    kernel. Loss ``−Σ_m π_m log q(j_m)``: minimizing it moves ``q`` toward the kernel, which is
    what lowers the estimator's variance. Gradients reach only the proposal (through ``log q``).
    """
    if samples.log_prob is None:
        raise ValueError("this draw has no log_prob: only learned proposals have a loss")
    with torch.no_grad():
        K = kernel_matrix(select_blocks(sampled, rows), spec)                        # [rows, H, bq, M]
        target = K.abs().mean((1, 2))
        target = target / target.sum(-1, keepdim=True).clamp_min(torch.finfo(target.dtype).tiny)
    log_q = samples.log_prob.flatten(0, 1).index_select(0, rows)                       # [rows, M]
    return -(target.to(log_q.dtype) * log_q).sum(-1).mean()
