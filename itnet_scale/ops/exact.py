"""The exact integrator: every pair, by the backend its :class:`~itnet_scale.ops.settings.Exact` setting names.

``reference`` materializes every pair (:mod:`itnet_scale.ops.reference`, the spec); ``torch`` computes the same
numbers tile by tile with online normalization and recomputation in backward (:mod:`itnet_scale.ops.tiled`);
``triton`` runs the fused kernels (:mod:`itnet_scale.ops.triton`: forward, and backward in training) where
they cover the call, ``torch`` elsewhere.
"""

from __future__ import annotations

from torch import Tensor

from itnet_scale.ops.reference import integral_transform_reference
from itnet_scale.ops.settings import Exact, requested_backend
from itnet_scale.ops.spec import KernelInputs, KernelSpec
from itnet_scale.ops.tiled import integral_transform_tiled
from itnet_scale.ops.triton import (
    environment_problem,
    integral_transform_triton,
    interpreting,
    unsupported_features,
)


def exact_backend(inp: KernelInputs, spec: KernelSpec, backend: str) -> str:
    """The backend that computes this call: ``reference``, ``torch`` or ``triton``.

    ``backend`` (or what ``ITNET_BACKEND`` forces) ``auto`` picks ``triton`` for CUDA tensors whose features the
    kernels compute (:func:`~itnet_scale.ops.triton.unsupported_features`; in training too), ``torch`` otherwise;
    ``triton`` runs the kernels where they compute the call and ``torch`` where they do not yet, and is a
    ``RuntimeError`` naming the cause where the kernels cannot run at all (CPU tensors without Triton's
    interpreter).
    """
    requested = requested_backend(backend)
    if requested in ("reference", "torch"):
        return requested
    if requested == "triton":
        problem = environment_problem(inp.v.device)
        if problem:
            raise RuntimeError(problem)
        return "torch" if unsupported_features(inp, spec) else "triton"
    on_gpu = inp.v.is_cuda and not interpreting()
    return "triton" if on_gpu and not unsupported_features(inp, spec) else "torch"


def integrate_exact(inp: KernelInputs, spec: KernelSpec, setting: Exact) -> Tensor:
    """``out_i = Σ_j K(i,j) v_j``: ``[B, H, Nq, e]``, inputs unchecked (:func:`itnet_scale.ops.integrate` checks
    them; the Monte Carlo integrator calls this on sampled sets it built itself). ``setting.block_size`` shapes the
    ``torch`` tiles; the Triton kernel picks its own power-of-two blocks."""
    backend = exact_backend(inp, spec, setting.backend)
    if backend == "reference":
        return integral_transform_reference(inp, spec)
    if backend == "triton":
        return integral_transform_triton(inp, spec)
    return integral_transform_tiled(inp, spec, block_size=setting.block_size)
