"""Parallelism beyond data parallel: sequence parallelism (DeepSpeed Ulysses, carried low-rank state)."""

from itnet_scale.parallel.ulysses import SequenceParallelIntegralTransform, gather_sequence, shard_sequence

__all__ = ["SequenceParallelIntegralTransform", "gather_sequence", "shard_sequence"]
