"""Test-wide settings: fp32/fp64 on CPU, deterministic seeds, Triton's CPU interpreter."""

import os

# Triton kernels must see the interpreter flag before they are decorated.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
