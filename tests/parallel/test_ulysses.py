"""Sequence parallelism: sharded over 2 or 4 ranks, the layer gives the outputs and gradients of the whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed import run_deepspeed
from tests.parallel.ulysses_worker import CASES

WORKER = Path(__file__).with_name("ulysses_worker.py")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("ranks", [2, 4])
def test_sequence_parallel_matches_one_rank(ranks):
    """Every case of the worker (exact causal+decay / window / padding / per-head weights through DeepSpeed
    Ulysses; causal lowrank with and without decay through the carried state), fp64: outputs at 1e-9 and every
    gradient (parameters, inputs, weights) at 1e-8 against the whole sequence on one rank; a length or a head
    count that does not divide by the ranks, and montecarlo, are refused by name."""
    process = run_deepspeed(WORKER, [], ranks=ranks, timeout=240)
    assert process.returncode == 0, process.stdout[-4000:]
    for rank in range(ranks):
        for name in CASES:
            assert f"rank {rank}: {name} matches" in process.stdout, (rank, name, process.stdout[-3000:])
        assert f"rank {rank}: refused: sequence length {4 * ranks + 1} is not divisible by " \
               f"sequence_parallel_size={ranks}" in process.stdout
        assert f"rank {rank}: refused: the montecarlo integrator cannot be sequence-parallel" in process.stdout
        assert f"rank {rank}: refused at the call: the montecarlo integrator cannot be" in process.stdout
        assert f"rank {rank}: refused: heads=3 is not divisible by sequence_parallel_size={ranks}" in process.stdout
