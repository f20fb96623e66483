"""Exactly-once distributed evaluation of an indexable split: which examples each rank reads, and the gather back.

A benchmark split of ``N`` examples (:class:`~itnet_scale.tasks.benchmark.Split`) is evaluated by ``W`` ranks.
:class:`EvalPartition` gives rank ``r`` the examples ``r, r + W, r + 2W, …`` (torch's ``DistributedSampler``
order, unshuffled), ``ceil(N / W)`` slots per rank, so every rank runs the same ``ceil(ceil(N / W) / batch_size)``
forwards of the same batch sizes — which ZeRO-3 needs (every rank gathers the parameters of every forward
together) and which the gather needs (tensors of one shape). A rank short of one example fills its last slot with a
repeat (``rank_padding`` marks it): computed, never counted. :meth:`EvalPartition.gather` all-gathers every rank's
per-example outputs and puts them back in the split's order with the padding dropped, so the metrics see exactly
the ``N`` examples — the same numbers as one rank computes.

The trap this avoids: ``DistributedSampler`` (``drop_last=False``) makes the split divisible by repeating its first
examples, indistinguishable from the others, so metrics count up to ``W − 1`` examples twice (and depend on the
number of ranks); ``drop_last=True`` drops up to ``W − 1`` examples instead. Either way the official metric is not
computed on the split.

It lives with the data because it is a sampler: it decides what each rank reads (``rank_indices`` is a valid
``DataLoader(sampler=…)``, with ``batch_size`` the partition's), and the gather is its inverse.
(:mod:`itnet_scale.data.heldout` splits streamed shard sets by whole batches instead: they cannot be indexed.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class EvalPartition:
    """``examples`` split over ``world_size`` ranks that evaluate ``batch_size`` slots per forward (see the module
    doc)."""

    examples: int
    world_size: int
    batch_size: int

    def __post_init__(self) -> None:
        for name in ("examples", "world_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalPartition.{name} must be an int >= 1, got {value!r}")

    @property
    def per_rank(self) -> int:
        """Slots every rank evaluates: ``ceil(examples / world_size)``."""
        return math.ceil(self.examples / self.world_size)

    @property
    def forwards(self) -> int:
        """Forwards every rank runs: ``ceil(per_rank / batch_size)`` (the last one may hold fewer slots)."""
        return math.ceil(self.per_rank / self.batch_size)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")

    def rank_indices(self, rank: int) -> list[int]:
        """The example index of each of rank ``rank``'s :attr:`per_rank` slots, in order: ``rank + k · world_size``,
        or for a padding slot (past the last example) a repeat of an example."""
        self._check_rank(rank)
        return [(rank + k * self.world_size) % self.examples for k in range(self.per_rank)]

    def rank_padding(self, rank: int) -> Tensor:
        """``[per_rank]`` bool: True where rank ``rank``'s slot is padding (its output never counts)."""
        self._check_rank(rank)
        return torch.arange(self.per_rank) * self.world_size + rank >= self.examples

    def merge(self, outputs: Sequence[Tensor]) -> Tensor:
        """``[examples, …]``: every rank's outputs ``[per_rank, …]`` (by rank) in the split's order, the padding
        dropped."""
        if len(outputs) != self.world_size:
            raise ValueError(f"merge takes one output per rank ({self.world_size}), got {len(outputs)}")
        stacked = torch.stack(list(outputs), dim=1)  # [per_rank, W, …]: slot k of rank r is example k·W + r
        return stacked.reshape(self.per_rank * self.world_size, *stacked.shape[2:])[: self.examples]

    def gather(self, local: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
        """``[examples, …]`` on every rank: this rank's per-slot outputs ``local`` ``[per_rank, …]`` (padding slots
        included) all-gathered over ``group`` (default: the world) and :meth:`merge`\\ d. Every rank of the group must
        call it with outputs of the same shape and dtype, on a device its backend gathers (NCCL: the GPU)."""
        if local.ndim == 0 or local.shape[0] != self.per_rank:
            raise ValueError(f"gather takes this rank's {self.per_rank} per-slot outputs [per_rank, ...], got shape "
                             f"{tuple(local.shape)}")
        if not (dist.is_available() and dist.is_initialized()):
            if self.world_size != 1:
                raise ValueError(f"the partition is for {self.world_size} ranks but no process group is initialized")
            return self.merge([local])
        ranks = dist.get_world_size(group)
        if ranks != self.world_size:
            raise ValueError(f"the partition is for {self.world_size} ranks, the process group has {ranks}")
        pieces = [torch.empty_like(local) for _ in range(ranks)]
        dist.all_gather(pieces, local.contiguous(), group=group)
        return self.merge(pieces)
