"""Test-wide settings: one intra-op thread, deterministic seeds, Triton's CPU interpreter."""

import os

# Triton kernels must see the interpreter flag before they are decorated.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

# The tests' tensors are small: intra-op threads only add synchronization, which stalls badly
# on a loaded machine. Benchmarks (tools/bench.py) keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
