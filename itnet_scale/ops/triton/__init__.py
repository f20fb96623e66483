"""Fused Triton kernels of the integrators (DESIGN §1, "Backends"): the ``triton`` backend.

The exact integrator, forward (:mod:`.exact_forward`) and backward (:mod:`.exact_backward`), joined in one autograd
function (:func:`integral_transform_triton`; :func:`itnet_scale.ops.exact.exact_backend` decides when it runs), and
the low-rank integrator's causal chunk scan, forward and backward (:mod:`.lowrank_chunk`,
:func:`causal_scan_triton`; :func:`itnet_scale.ops.lowrank.lowrank_backend` decides). On CPU the kernels run only
under Triton's interpreter (``TRITON_INTERPRET=1`` set before the package is imported), which the tests use.
"""

from itnet_scale.ops.triton.exact_backward import exact_backward, integral_transform_triton
from itnet_scale.ops.triton.exact_forward import (
    ExactForward,
    check_runnable,
    environment_problem,
    exact_forward,
    interpreting,
    unsupported_features,
)
from itnet_scale.ops.triton.lowrank_chunk import (
    causal_scan_triton,
    kernel_chunk,
    scan_backward,
    scan_forward,
    scan_unsupported,
)

__all__ = [
    "ExactForward",
    "causal_scan_triton",
    "check_runnable",
    "environment_problem",
    "exact_backward",
    "exact_forward",
    "integral_transform_triton",
    "interpreting",
    "kernel_chunk",
    "scan_backward",
    "scan_forward",
    "scan_unsupported",
    "unsupported_features",
]
