"""Parallelism beyond data parallel: sequence parallelism (DeepSpeed Ulysses, carried low-rank state).

Trainer order: ``init_distributed()`` (:mod:`itnet_scale.parallel.process_group`) →
``sp = SequenceParallel.setup(size)`` → build the model →
``apply_sequence_parallel(model, sp)`` → ``deepspeed.initialize(model=model, mpu=sp.mpu,
config=sequence_parallel_deepspeed_config(config, sp), ...)`` → per step
``engine.backward(loss * sp.loss_scale)``; the data loader shards by ``sp.data_parallel_rank`` /
``sp.data_parallel_size`` (see :mod:`itnet_scale.parallel.groups` and :mod:`itnet_scale.parallel.model`).
"""

from itnet_scale.parallel.groups import (
    SequenceParallel,
    check_sequence_parallel_size,
    sequence_parallel_deepspeed_config,
)
from itnet_scale.parallel.model import (
    SequenceParallelBackbone,
    apply_sequence_parallel,
    check_sequence_parallel,
    remove_sequence_parallel,
)
from itnet_scale.parallel.process_group import init_distributed
from itnet_scale.parallel.ulysses import (
    SequenceParallelIntegralTransform,
    gather_sequence,
    parallelize_transform,
    shard_sequence,
    transform_problem,
    unparallelize_transform,
)

__all__ = ["SequenceParallel", "SequenceParallelBackbone", "SequenceParallelIntegralTransform",
           "apply_sequence_parallel", "check_sequence_parallel", "check_sequence_parallel_size", "gather_sequence",
           "init_distributed", "parallelize_transform", "remove_sequence_parallel",
           "sequence_parallel_deepspeed_config", "shard_sequence", "transform_problem", "unparallelize_transform"]
