"""Low-rank integrator: ``F(s(i,j)) ≈ φ_i·ψ_j`` turns ``Σ_j`` into ``O(N·R·e)`` (DESIGN §1).

Three forms of the same computation, each tested against the one before it (as in
flash-linear-attention's ``ops/``):

- :mod:`.naive` materializes ``φ ψᵀ`` — the spec;
- :mod:`.chunk` runs causal sequences as a chunked scan with decay (in torch, or in Triton:
  :mod:`itnet_scale.ops.triton.lowrank_chunk`), non-causal ones in one pass;
- :mod:`.recurrent` walks one position at a time with an explicit state (streaming).

:mod:`.integrator` puts them behind :func:`itnet_scale.ops.integrate`: features from the exact
kernel's inputs, the form the backend names, long causal passes in segments. The feature maps
``φ, ψ`` themselves are parameters of the layer (:class:`itnet_scale.nn.FeatureMap`).
"""

from itnet_scale.ops.lowrank.chunk import lowrank_chunk
from itnet_scale.ops.lowrank.integrator import (
    check_lowrank_support,
    integrate_lowrank,
    lowrank_backend,
    lowrank_inputs,
    lowrank_kernel,
)
from itnet_scale.ops.lowrank.naive import lowrank_kernel_matrix, lowrank_naive
from itnet_scale.ops.lowrank.recurrent import lowrank_recurrent, lowrank_step
from itnet_scale.ops.lowrank.spec import FeatureMapFn, LowRankInputs, check_lowrank_inputs, readout, state_width

__all__ = [
    "FeatureMapFn",
    "LowRankInputs",
    "check_lowrank_inputs",
    "check_lowrank_support",
    "integrate_lowrank",
    "lowrank_backend",
    "lowrank_chunk",
    "lowrank_inputs",
    "lowrank_kernel",
    "lowrank_kernel_matrix",
    "lowrank_naive",
    "lowrank_recurrent",
    "lowrank_step",
    "readout",
    "state_width",
]
