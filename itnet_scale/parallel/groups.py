"""Sequence-parallel process groups, made by DeepSpeed's own ``parallel_state_sp``, and what the trainer needs.

``SequenceParallel.setup(size)`` — after ``init_distributed``, before ``deepspeed.initialize`` — splits
the ``W`` ranks into ``W/size`` sequence-parallel groups of ``size`` consecutive ranks (DeepSpeed's layout: rank
``g·size + r`` is rank ``r`` of group ``g``). The ranks of one group hold the same samples and split their
sequences; group ``g`` is data-parallel rank ``g`` of ``D = W/size``. ``mpu`` is the module
``deepspeed.runtime.sequence_parallel.parallel_state_sp`` itself, to pass as ``deepspeed.initialize(mpu=...)``.

Gradients. With that mpu, DeepSpeed reduces every gradient over the sequence-data-parallel group (all ``W``
ranks) and divides the sum by ``W/size = D``: the engine at ZeRO 0 (``_reduce_non_expert_gradients``), ZeRO 1–2
(``average_tensor``, ``allreduce_bucket``) and ZeRO 3 (``__avg_scatter_contiguous_grads``) alike. Every rank of
a group computes the same loss ``L_g`` of its group's batch from the gathered hidden states
(:func:`itnet_scale.parallel.apply_sequence_parallel`). The gather's backward sums the ``size`` copies of
``∂L_g/∂hidden`` onto each shard, so the sharded blocks' gradients, summed over the group, are
``size · ∂L_g/∂θ``; the replicated encoders and heads give ``∂L_g/∂θ`` on every rank, ``size ·`` in the sum as
well. DeepSpeed's reduction therefore yields ``size · mean_g ∂L_g/∂θ``: the trainer multiplies the loss by
:attr:`SequenceParallel.loss_scale` ``= 1/size`` before ``engine.backward`` (and logs the unscaled loss) to get
``mean_g ∂L_g/∂θ``, the gradient of plain data parallelism over ``D`` ranks. Gradient clipping needs nothing
more: the grad norm is taken on the reduced gradients (ZeRO 0 counts sequence-parallel rank 0's copy only,
ZeRO 1–3 their disjoint partitions).

One exception, in DeepSpeed 0.19.8 itself: ZeRO 3's reduce-scatter path (``__avg_scatter_grads``, the default
``reduce_scatter: true``) divides by all ``W`` ranks, ignoring the sequence-parallel size; its all-reduce path
(``__avg_scatter_contiguous_grads``: ``reduce_scatter: false`` with the default ``contiguous_gradients: true``)
divides by ``W/size`` as the others do. :func:`sequence_parallel_deepspeed_config` sets that (and refuses a
config asking for the other path), so ``loss_scale`` is ``1/size`` at every stage.

The DeepSpeed config's batch arithmetic is per data-parallel rank: ``train_batch_size =
train_micro_batch_size_per_gpu · gradient_accumulation_steps · D`` (DeepSpeed counts ``W/size`` ranks). Pass no
``training_data`` to ``deepspeed.initialize``: its loader asks the mpu for ``get_data_parallel_world_size``,
which ``parallel_state_sp`` lacks; build the loader from ``data_parallel_rank``/``data_parallel_size``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import deepspeed.comm
import torch.distributed as dist
from deepspeed.runtime.sequence_parallel import parallel_state_sp


@dataclass(frozen=True, eq=False)
class SequenceParallel:
    """This rank's place in the sequence-parallel layout (see the module doc).

    - ``size``, ``rank``, ``group``: the sequence-parallel group (``group`` is None when ``size`` is 1);
    - ``data_parallel_rank``, ``data_parallel_size``: what the data loader shards by — every rank of a group
      must get the same batch (same samples, same masking and augmentation draws);
    - ``data_parallel_group``: the ranks of the other groups with the same ``rank`` (one copy of each
      sample), e.g. for the contrastive loss's all-gather of embeddings (None when ``size`` is 1: every rank);
    - ``mpu``: what ``deepspeed.initialize(mpu=...)`` takes (None when ``size`` is 1);
    - :attr:`loss_scale`: the factor of the loss before ``engine.backward``.
    """

    size: int
    rank: int
    group: dist.ProcessGroup | None
    data_parallel_rank: int
    data_parallel_size: int
    data_parallel_group: dist.ProcessGroup | None
    mpu: ModuleType | None

    @property
    def loss_scale(self) -> float:
        """``1/size``: multiply the (replicated) loss by it before ``engine.backward`` (see the module doc)."""
        return 1.0 / self.size

    def __deepcopy__(self, memo: dict) -> SequenceParallel:
        return self  # a handle on process groups, which cannot be copied

    def deepspeed_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The DeepSpeed ``config`` adjusted for this layout (:func:`sequence_parallel_deepspeed_config`): what
        :func:`itnet_scale.train.engine.build_engine` calls, so the engine needs no import of this package."""
        return sequence_parallel_deepspeed_config(config, self)

    @classmethod
    def setup(cls, size: int) -> SequenceParallel:
        """Create (once per process) the groups of ``sequence_parallel_size=size`` ranks. Call it on every rank
        after ``init_distributed()`` and before ``deepspeed.initialize``. A size below 1, or one that
        does not divide the world, raises ``ValueError`` naming ``sequence_parallel_size``."""
        check_sequence_parallel_size(size)
        if not deepspeed.comm.is_initialized():
            raise RuntimeError("SequenceParallel.setup needs itnet_scale.parallel.init_distributed() to have run first")
        world, global_rank = dist.get_world_size(), dist.get_rank()
        check_sequence_parallel_size(size, world)
        if size == 1:
            return cls(1, 0, None, global_rank, world, None, None)
        try:
            existing = parallel_state_sp.get_sequence_parallel_world_size()
        except AssertionError:  # not initialized yet
            existing = None
        if existing is None:
            parallel_state_sp.initialize_sequence_parallel(size)
        elif existing != size:
            raise ValueError(f"sequence_parallel_size={size}: this process already made groups of {existing}")
        data_parallel_group = None
        for first in range(size):  # every rank takes part in creating every group
            group = dist.new_group(list(range(first, world, size)))
            if global_rank % size == first:
                data_parallel_group = group
        rank = parallel_state_sp.get_sequence_parallel_rank()
        assert rank == global_rank % size, "DeepSpeed's sequence-parallel groups are consecutive ranks"
        return cls(size, rank, parallel_state_sp.get_sequence_parallel_group(), global_rank // size, world // size,
                   data_parallel_group, parallel_state_sp)


def check_sequence_parallel_size(size: int, world_size: int | None = None) -> None:
    """``ValueError`` naming ``sequence_parallel_size`` unless it is an integer ≥ 1 dividing ``world_size``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"sequence_parallel_size must be an integer >= 1, got {size!r}")
    if world_size is not None and world_size % size:
        raise ValueError(f"sequence_parallel_size={size} does not divide the world size {world_size} "
                         f"(the {world_size} ranks are split into groups of sequence_parallel_size)")


def sequence_parallel_deepspeed_config(config: Mapping[str, Any], sp: SequenceParallel) -> dict[str, Any]:
    """A copy of the DeepSpeed ``config`` with what ``sp`` needs for ``loss_scale`` to hold (see the module doc):
    at ZeRO 3, ``reduce_scatter: false``. A config that sets ``reduce_scatter: true`` or
    ``contiguous_gradients: false`` at ZeRO 3 with ``sp.size > 1`` raises ``ValueError`` naming the key."""
    config = copy.deepcopy(dict(config))
    zero = config.get("zero_optimization") or {}
    if sp.size == 1 or int(zero.get("stage", 0)) != 3:
        return config
    for key, needed in (("reduce_scatter", False), ("contiguous_gradients", True)):
        if key in zero and bool(zero[key]) != needed:
            raise ValueError(f"zero_optimization.{key}={zero[key]!r} cannot run with sequence_parallel_size="
                             f"{sp.size} at ZeRO 3: DeepSpeed's reduce-scatter path divides gradients by every rank, "
                             f"not by the data-parallel size; use {key}={str(needed).lower()}")
    config["zero_optimization"] = {**zero, "reduce_scatter": False}
    return config
