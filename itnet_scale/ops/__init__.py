"""The functional core of the ITNet operator (DESIGN §1).

:func:`integrate` is the one entry point: the kernel's per-head inputs, its spec and an integrator setting
(:class:`Exact`, :class:`LowRank`, :class:`MonteCarlo`) in, ``Σ_j K(i,j) v_j`` out.
"""

from itnet_scale.ops.integrate import Integral, integrate
from itnet_scale.ops.reference import integral_transform_reference, kernel_matrix
from itnet_scale.ops.settings import (
    BACKENDS,
    INTEGRATORS,
    PROPOSALS,
    Exact,
    Integrator,
    LowRank,
    MonteCarlo,
    make_integrator,
    with_settings,
)
from itnet_scale.ops.spec import ACTIVATIONS, MODES, SUPPORTS, KernelInputs, KernelSpec

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "INTEGRATORS",
    "MODES",
    "PROPOSALS",
    "SUPPORTS",
    "Exact",
    "Integral",
    "Integrator",
    "KernelInputs",
    "KernelSpec",
    "LowRank",
    "MonteCarlo",
    "integral_transform_reference",
    "integrate",
    "kernel_matrix",
    "make_integrator",
    "with_settings",
]
