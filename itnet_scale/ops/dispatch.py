"""Pick a backend for the exact integrator and run it.

``reference`` materializes every pair (the spec); ``tiled`` computes the same numbers block
by block with online normalization and recomputation in backward. ``auto`` takes ``tiled``.
"""

from __future__ import annotations

from torch import Tensor

from itnet_scale.ops.reference import integral_transform_reference
from itnet_scale.ops.spec import KernelInputs, KernelSpec, check_inputs
from itnet_scale.ops.tiled import integral_transform_tiled

BACKENDS = ("auto", "reference", "tiled")


def resolve_backend(backend: str) -> str:
    """The concrete backend ``auto`` stands for."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "tiled" if backend == "auto" else backend


def integral_transform(
    inp: KernelInputs,
    spec: KernelSpec,
    backend: str = "auto",
    block_size: tuple[int, int] | None = None,
    check: bool = True,
) -> Tensor:
    """``out_i = Σ_j K(i,j) v_j`` (DESIGN §1): ``[B, H, Nq, e]``.

    Args:
        inp: the per-head tensors (see :class:`KernelInputs`).
        spec: mode, support, activation, offset table extent.
        backend: ``auto`` | ``reference`` | ``tiled``.
        block_size: ``(queries, sources)`` per tile for ``tiled``.
        check: validate shapes and values first (costs a host sync for the NaN check).
    """
    if check:
        check_inputs(inp, spec)
    if resolve_backend(backend) == "reference":
        return integral_transform_reference(inp, spec)
    return integral_transform_tiled(inp, spec, block_size=block_size)
