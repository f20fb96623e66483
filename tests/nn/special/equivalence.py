"""What the special-case tests share: backends, tile size, tolerances, the closeness check."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.ops import Exact

BLOCK = (16, 16)  # small tiles, so odd sizes give several, partial and skipped tiles
EXACT = {"reference": Exact("reference"), "torch": Exact("torch", block_size=BLOCK)}  # each backend's setting
BACKENDS = tuple(EXACT)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
ON_BACKENDS = pytest.mark.parametrize("backend", BACKENDS)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Equal to round-off of ``dtype`` (1e-5 fp32, 1e-10 fp64), absolute and relative."""
    torch.testing.assert_close(actual, expected, rtol=TOL[dtype], atol=TOL[dtype], msg=lambda m: f"{what} {m}")
