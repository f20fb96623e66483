"""Test-wide settings: one intra-op thread, deterministic seeds, Triton's CPU interpreter."""

import os
import sys

# Triton kernels must see the interpreter flag before they are decorated.
os.environ.setdefault("TRITON_INTERPRET", "1")
# DeepSpeed loads its CPU Adam op (ZeRO-Offload) only where `ninja` runs: the venv's, when pytest runs from it
# without the venv activated (here and in the ranks the tests launch, which inherit the variable).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

import pytest
import torch

# The tests' tensors are small: intra-op threads only add synchronization, which stalls badly
# on a loaded machine. Benchmarks (tools/bench.py) keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
