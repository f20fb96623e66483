"""Fused Triton kernels of the integrators (DESIGN §1, "Backends"): the ``triton`` backend.

So far the exact integrator, forward (:mod:`.exact_forward`) and backward (:mod:`.exact_backward`), joined in one
autograd function (:func:`integral_transform_triton`); :func:`itnet_scale.ops.exact.exact_backend` decides when it
runs. On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the package is
imported), which the tests use.
"""

from itnet_scale.ops.triton.exact_backward import exact_backward, integral_transform_triton
from itnet_scale.ops.triton.exact_forward import (
    ExactForward,
    environment_problem,
    exact_forward,
    interpreting,
    unsupported_features,
)

__all__ = [
    "ExactForward",
    "environment_problem",
    "exact_backward",
    "exact_forward",
    "integral_transform_triton",
    "interpreting",
    "unsupported_features",
]
