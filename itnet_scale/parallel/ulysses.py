"""Sequence parallelism for the integral transform: DeepSpeed Ulysses, and a carried state for causal low rank.

:func:`parallelize_transform` makes an :class:`~itnet_scale.nn.IntegralTransform` take this rank's shard of the
sequence, from outside the layer: as ``torch.distributed.fsdp.fully_shard`` does, it swaps the instance's class
for a subclass whose ``forward`` runs over the group (:class:`SequenceParallelIntegralTransform`), so the layer's
parameters, their names and its ``state_dict`` stay what they were, and :mod:`itnet_scale.nn` knows nothing of it.

Each rank of the sequence-parallel group holds one contiguous shard of every sequence: ``x`` ``[B, N/P, dim]``,
rank ``r`` positions ``[r·N/P, (r+1)·N/P)`` (:func:`shard_sequence` cuts them; ``N`` must divide by ``P``).

**exact** (Ulysses). The projections are position-wise, so each rank computes them on its shard
(:meth:`IntegralTransform.project`). DeepSpeed's ``DistributedAttention`` then all-to-alls them from
"my positions, all heads" to "all positions, my heads" (``H/P`` heads per rank), the exact kernel runs on whole
sequences for those heads — τ's running sum included — and a second all-to-all brings the outputs back to
"my positions, all heads" for the output projection. Positions, source weights and padding are position-wise
inputs every head needs; they are all-gathered along the sequence (with gradients for the weights). Every
per-head tensor travels packed in DistributedAttention's ``value``; its ``query`` and ``key`` carry one dummy
channel, so nothing depends on how many of q, k, a, b and the decay a layer has.

**lowrank, causal**: no all-to-all. Each rank scans its own shard; the state entering rank ``r`` is the
rank ``r−1``'s final state, found by a scan over the ranks of everyone's (zero-start) final states —
``S_r = D_{r−1}·S_{r−1} + S⁰_{r−1}``, with ``D`` the decay across a shard — from one all-gather; then each
rank re-runs its shard from its entering state. Two local passes and one small all-gather, no pipeline bubble.

Anything else (montecarlo, non-causal lowrank, cross transforms, ``attn_mask``) is refused with a clear error.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.sequence.layer import DistributedAttention
from torch import Tensor

from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.ops import Exact, LowRank, integrate


def shard_sequence(t: Tensor, group: dist.ProcessGroup, dim: int = 1) -> Tensor:
    """This rank's contiguous shard of ``t`` along ``dim``; the length must divide by the group size."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if t.shape[dim] % size:
        raise ValueError(f"sequence length {t.shape[dim]} is not divisible by sequence_parallel_size={size}; "
                         f"pad the batch to a multiple of {size} (padding_mask marks the padding)")
    return t.chunk(size, dim)[rank]


class _AllGather(torch.autograd.Function):
    """``[P, *t.shape]``: every rank's ``t``; backward sums each rank's gradient of its slot over the group.

    ``torch.distributed.nn.all_gather`` is not used: off NCCL its backward emulates the reduce-scatter with
    scatters addressed by group rank as if it were a global rank, which fails for every group but the one
    starting at rank 0 (e.g. the second sequence-parallel group of 4 ranks in groups of 2)."""

    @staticmethod
    def forward(ctx, t: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        group, rank = ctx.group, dist.get_rank(ctx.group)
        if dist.get_backend(group) == dist.Backend.NCCL:
            out = torch.empty_like(grad[rank])
            dist.reduce_scatter(out, [g.contiguous() for g in grad.unbind(0)], group=group)
            return out, None
        total = grad.contiguous().clone()  # gloo has no reduce-scatter: sum everything, keep this rank's slot
        dist.all_reduce(total, group=group)
        return total[rank], None


def all_gather(t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """``[P, *t.shape]``: ``t`` of every rank of ``group``, in rank order (differentiable: the gradient of
    rank ``r``'s slot, summed over the ranks, returns to rank ``r``'s ``t``)."""
    return _AllGather.apply(t, group)


def gather_sequence(t: Tensor, group: dist.ProcessGroup, dim: int = 1) -> Tensor:
    """The whole sequence from every rank's shard (differentiable: gradients return to their shards)."""
    return torch.cat(all_gather(t, group).unbind(0), dim=dim)


def transform_problem(layer: IntegralTransform, size: int) -> str | None:
    """Why ``layer`` cannot run over ``size`` ranks, or None if it can."""
    if size == 1:
        return None
    integrator = layer.integrator
    if isinstance(integrator, Exact):
        if layer.heads % size:
            return (f"heads={layer.heads} is not divisible by sequence_parallel_size={size} (Ulysses gives each "
                    "rank heads/size heads of an exact layer)")
        return None
    if isinstance(integrator, LowRank):
        if not layer.spec.causal:
            return (f"the lowrank integrator with support={layer.spec.support!r} is not causal: only the causal "
                    "scan has a state to carry across ranks (use support='causal', or the exact integrator)")
        return None
    return (f"the {integrator.name} integrator cannot be sequence-parallel: it draws its sources from the whole "
            "sequence, which no rank holds (use the exact integrator, or lowrank with a causal support)")


class _Ulysses:
    """A transform's sequence-parallel group and DeepSpeed's ``DistributedAttention`` over it. Not a module (no
    parameters, no hooks) and shared by copies of the layer: a process group cannot be copied."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.attention = DistributedAttention(_local_heads, group, scatter_idx=2, gather_idx=1)

    def __deepcopy__(self, memo: dict) -> _Ulysses:
        return self


class SequenceParallelIntegralTransform(IntegralTransform):
    """An :class:`IntegralTransform` self-transform run over a sequence sharded across a group (made by
    :func:`parallelize_transform`; see the module doc).

    Same parameters and, put together across the ranks, the same outputs and gradients as the layer on the whole
    sequence. ``forward(x, pos, weights=None, padding_mask=None)`` takes this rank's shards: ``x`` ``[B, N/P, dim]``,
    ``pos`` ``[B, N/P, P_dim]``, ``weights`` ``[B, N/P]`` or ``[B, N/P, H]``, ``padding_mask`` ``[B, N/P]``.
    """

    ulysses: _Ulysses

    def forward(self, x: Tensor, pos: Tensor, weights: Tensor | None = None,  # type: ignore[override]
                padding_mask: Tensor | None = None) -> Tensor:
        problem = transform_problem(self, dist.get_world_size(self.ulysses.group))
        if problem is not None:
            raise ValueError(problem)
        if isinstance(self.integrator, LowRank):
            return self._carried_state(x, pos, weights, padding_mask)
        B, n = self.check_features("x", x, self.dim)
        pos = self.positions("pos", pos, B, n, x)
        self.check_source_masks(weights, padding_mask, B, n)
        proj = self.project(x, x)
        names = list(proj)
        widths = [proj[name].shape[-1] for name in names]
        packed = torch.cat([proj[name] for name in names], dim=-1)  # [B, n, H, Σc]
        dummy = packed.new_zeros(B, n, self.heads, 1)
        group = self.ulysses.group
        full_pos = gather_sequence(pos, group)
        full_weights = None if weights is None else gather_sequence(weights, group)
        full_padding = None if padding_mask is None else gather_sequence(padding_mask.to(torch.uint8), group).bool()
        out = self.ulysses.attention(dummy, dummy, packed, 0, None, self, names, widths, full_pos, full_weights,
                                     full_padding)  # batch dim 0, no rotary embedding, then _local_heads' arguments
        return self.o_proj(out.flatten(2))  # [B, n, H, e] -> [B, n, dim]

    def _carried_state(self, x: Tensor, pos: Tensor, weights: Tensor | None,
                       padding_mask: Tensor | None) -> Tensor:
        """Causal low rank: scan the shard from the state the previous ranks leave (see the module doc)."""
        group = self.ulysses.group
        rank = dist.get_rank(group)
        whole_layer = super().forward
        y, alone = whole_layer(x, pos, weights=weights, padding_mask=padding_mask, return_state=True)
        decay = _shard_decay(self, x)  # [B, H]: exp(−Σ rate) across this shard (1 without decay)
        states = all_gather(alone, group)  # [P, B, H, R, e(+1)]
        decays = all_gather(decay, group)  # [P, B, H]
        # Every rank's output must depend on both gathers, or the ranks that do not use them would skip the
        # gathers' backward collectives and the others would wait for them forever. The term is exactly 0.
        anchor = 0.0 * (states.sum() + decays.sum())
        if rank == 0:
            return y + anchor
        entering = states[0]
        for r in range(1, rank):  # S_{r+1} = D_r · S_r + S⁰_r
            entering = decays[r][..., None, None] * entering + states[r]
        y, _ = whole_layer(x, pos, weights=weights, padding_mask=padding_mask, initial_state=entering,
                           return_state=True)
        return y + anchor


def _local_heads(_query: Tensor, _key: Tensor, packed: Tensor, layer: IntegralTransform, names: list[str],
                 widths: list[int], pos: Tensor, weights: Tensor | None, padding: Tensor | None) -> Tensor:
    """The exact kernel over whole sequences for this rank's heads: ``packed`` ``[B, N, H/P, Σc]`` →
    ``[B, N, H/P, e]`` (DistributedAttention's local attention)."""
    local = packed.shape[2]
    first = dist.get_rank(layer.ulysses.group) * local
    heads = slice(first, first + local)
    proj = dict(zip(names, packed.split(widths, dim=-1)))
    inp = layer.assemble(proj, pos, pos, heads=heads)
    if weights is not None:
        inp.weights = (weights[..., heads].transpose(1, 2) if weights.dim() == 3 else weights).to(inp.v.dtype)
    inp.padding = padding
    return integrate(inp, layer.spec, layer.integrator).out.transpose(1, 2)


def _shard_decay(layer: IntegralTransform, x: Tensor) -> Tensor:
    """``exp(−(τ_last − τ_0-))``: how much the state entering a shard fades by its end, ``[B, H]``."""
    B = x.shape[0]
    if layer.decay_proj is None:
        return x.new_ones(B, layer.heads)
    return torch.exp(-layer.decay_rate(x).double().sum(dim=1)).to(x.dtype)  # only the rate, not every projection


def parallelize_transform(layer: IntegralTransform, group: dist.ProcessGroup) -> IntegralTransform:
    """Make ``layer`` (in place; returned) run over ``group``: its ``forward`` takes this rank's shards. A layer
    that cannot (see :func:`transform_problem`) raises ``ValueError`` and stays as it was."""
    if isinstance(layer, SequenceParallelIntegralTransform):
        raise ValueError("this layer is sequence-parallel already")
    if type(layer) is not IntegralTransform:
        raise TypeError(f"sequence parallelism runs IntegralTransform layers, not {type(layer).__name__}")
    problem = transform_problem(layer, dist.get_world_size(group))
    if problem is not None:
        raise ValueError(problem)
    layer.__class__ = SequenceParallelIntegralTransform
    layer.ulysses = _Ulysses(group)
    return layer


def unparallelize_transform(layer: IntegralTransform) -> IntegralTransform:
    """Undo :func:`parallelize_transform` (in place; returned): the layer runs whole sequences again."""
    if isinstance(layer, SequenceParallelIntegralTransform):
        del layer.ulysses
        layer.__class__ = IntegralTransform
    return layer
