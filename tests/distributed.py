"""Launch a script on local ranks with DeepSpeed's own launcher, as users do (`deepspeed --num_accelerators N`).

The helpers live in :mod:`itnet_scale.benchmarking.launch` (the ZeRO memory benchmark launches ranks too); they
are re-exported here for the multi-rank tests.
"""

from __future__ import annotations

from itnet_scale.benchmarking.launch import REPO, free_port, run_deepspeed

__all__ = ["REPO", "free_port", "run_deepspeed"]
