"""Fused Triton kernels of the integrators (DESIGN §1, "Backends"): the ``triton`` backend.

So far the exact integrator's forward pass (:mod:`.exact_forward`); :func:`itnet_scale.ops.exact.exact_backend`
decides when it runs. On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
the package is imported), which the tests use.
"""

from itnet_scale.ops.triton.exact_forward import (
    ExactForward,
    environment_problem,
    exact_forward,
    interpreting,
    unsupported_features,
)

__all__ = ["ExactForward", "environment_problem", "exact_forward", "interpreting", "unsupported_features"]
