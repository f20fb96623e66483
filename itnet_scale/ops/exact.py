"""The exact integrator: every pair, by the backend its :class:`~itnet_scale.ops.settings.Exact` setting names.

``reference`` materializes every pair (:mod:`itnet_scale.ops.reference`, the spec); ``torch`` computes the same
numbers tile by tile with online normalization and recomputation in backward (:mod:`itnet_scale.ops.tiled`).
"""

from __future__ import annotations

from torch import Tensor

from itnet_scale.ops.reference import integral_transform_reference
from itnet_scale.ops.settings import Exact, resolve_backend
from itnet_scale.ops.spec import KernelInputs, KernelSpec
from itnet_scale.ops.tiled import integral_transform_tiled


def integrate_exact(inp: KernelInputs, spec: KernelSpec, setting: Exact) -> Tensor:
    """``out_i = Σ_j K(i,j) v_j``: ``[B, H, Nq, e]``, inputs unchecked (:func:`itnet_scale.ops.integrate` checks
    them; the Monte Carlo integrator calls this on sampled sets it built itself)."""
    if resolve_backend(setting.backend) == "reference":
        return integral_transform_reference(inp, spec)
    return integral_transform_tiled(inp, spec, block_size=setting.block_size)
