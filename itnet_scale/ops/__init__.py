"""The functional core of the ITNet operator (DESIGN §1)."""

from itnet_scale.ops.dispatch import BACKENDS, integral_transform
from itnet_scale.ops.reference import integral_transform_reference, kernel_matrix
from itnet_scale.ops.spec import ACTIVATIONS, MODES, SUPPORTS, KernelInputs, KernelSpec
from itnet_scale.ops.tiled import integral_transform_tiled

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MODES",
    "SUPPORTS",
    "KernelInputs",
    "KernelSpec",
    "integral_transform",
    "integral_transform_reference",
    "integral_transform_tiled",
    "kernel_matrix",
]
