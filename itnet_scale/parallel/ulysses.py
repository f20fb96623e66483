"""Sequence parallelism for the integral transform: DeepSpeed Ulysses, and a carried state for causal low rank.

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
from torch import Tensor, nn

from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.ops import integral_transform


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


class SequenceParallelIntegralTransform(nn.Module):
    """An :class:`IntegralTransform` self-transform run over a sequence sharded across ``group``.

    Same parameters (``.layer``) and, put together across the ranks, the same outputs and gradients as the
    layer on the whole sequence. ``forward(x, pos, weights=None, padding_mask=None)`` takes this rank's shards:
    ``x`` ``[B, N/P, dim]``, ``pos`` ``[B, N/P, P_dim]``, ``weights`` ``[B, N/P]`` or ``[B, N/P, H]``,
    ``padding_mask`` ``[B, N/P]``.
    """

    def __init__(self, layer: IntegralTransform, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.layer = layer
        self.group = group
        size = dist.get_world_size(group)
        if layer.integrator == "exact" and layer.heads % size:
            raise ValueError(f"heads={layer.heads} is not divisible by sequence_parallel_size={size} "
                             "(Ulysses gives each rank heads/size heads)")
        self.attention = DistributedAttention(self._local_heads, group, scatter_idx=2, gather_idx=1)

    def forward(self, x: Tensor, pos: Tensor, weights: Tensor | None = None,
                padding_mask: Tensor | None = None) -> Tensor:
        layer = self.layer
        if layer.integrator == "lowrank" and layer.spec.causal:
            return self._carried_state(x, pos, weights, padding_mask)
        if layer.integrator != "exact":
            raise ValueError(f"sequence parallelism supports integrator='exact' (Ulysses) and causal 'lowrank' "
                             f"(carried state), not integrator={layer.integrator!r} with support "
                             f"{layer.spec.support!r}")
        B, n = layer._check_features("x", x, layer.dim)
        pos = layer._positions("pos", pos, B, n, x)
        layer._check_source_masks(weights, padding_mask, B, n)
        proj = layer.project(x, x)
        names = list(proj)
        widths = [proj[name].shape[-1] for name in names]
        packed = torch.cat([proj[name] for name in names], dim=-1)  # [B, n, H, Σc]
        dummy = packed.new_zeros(B, n, layer.heads, 1)
        full_pos = gather_sequence(pos, self.group)
        full_weights = None if weights is None else gather_sequence(weights, self.group)
        full_padding = (None if padding_mask is None
                        else gather_sequence(padding_mask.to(torch.uint8), self.group).bool())
        out = self.attention(dummy, dummy, packed, 0, None, names, widths, full_pos, full_weights, full_padding)
        return layer.o_proj(out.flatten(2))  # [B, n, H, e] -> [B, n, dim]

    def _local_heads(self, _query: Tensor, _key: Tensor, packed: Tensor, names: list[str], widths: list[int],
                     pos: Tensor, weights: Tensor | None, padding: Tensor | None) -> Tensor:
        """The exact kernel over whole sequences for this rank's heads: ``packed`` ``[B, N, H/P, Σc]`` →
        ``[B, N, H/P, e]``."""
        layer = self.layer
        local = packed.shape[2]
        first = dist.get_rank(self.group) * local
        heads = slice(first, first + local)
        proj = dict(zip(names, packed.split(widths, dim=-1)))
        inp = layer.assemble(proj, pos, pos, heads=heads)
        if weights is not None:
            inp.weights = (weights[..., heads].transpose(1, 2) if weights.dim() == 3 else weights).to(inp.v.dtype)
        inp.padding = padding
        out = integral_transform(inp, layer.spec, backend=layer.backend, block_size=layer.block_size)
        return out.transpose(1, 2)

    def _carried_state(self, x: Tensor, pos: Tensor, weights: Tensor | None,
                       padding_mask: Tensor | None) -> Tensor:
        """Causal low rank: scan the shard from the state the previous ranks leave (see the module doc)."""
        layer = self.layer
        rank = dist.get_rank(self.group)
        y, alone = layer(x, pos, weights=weights, padding_mask=padding_mask, return_state=True)
        decay = _shard_decay(layer, x)  # [B, H]: exp(−Σ rate) across this shard (1 without decay)
        states = all_gather(alone, self.group)  # [P, B, H, R, e(+1)]
        decays = all_gather(decay, self.group)  # [P, B, H]
        # Every rank's output must depend on both gathers, or the ranks that do not use them would skip the
        # gathers' backward collectives and the others would wait for them forever. The term is exactly 0.
        anchor = 0.0 * (states.sum() + decays.sum())
        if rank == 0:
            return y + anchor
        entering = states[0]
        for r in range(1, rank):  # S_{r+1} = D_r · S_r + S⁰_r
            entering = decays[r][..., None, None] * entering + states[r]
        y, _ = layer(x, pos, weights=weights, padding_mask=padding_mask, initial_state=entering, return_state=True)
        return y + anchor


def _shard_decay(layer: IntegralTransform, x: Tensor) -> Tensor:
    """``exp(−(τ_last − τ_0-))``: how much the state entering a shard fades by its end, ``[B, H]``."""
    B = x.shape[0]
    if layer.decay_proj is None:
        return x.new_ones(B, layer.heads)
    return torch.exp(-layer.decay_rate(x).double().sum(dim=1)).to(x.dtype)  # only the rate, not every projection
