"""Monte Carlo integrator: the exact kernel on ``M`` sampled sources per query block (DESIGN §1).

:mod:`.proposals` draws the sources (uniform, window-stratified, learned from the low-rank
features); :mod:`.estimator` evaluates the exact kernel on them through the exact
integrator's backends (``reference``: naive; ``torch``: fused tiles); :mod:`.integrator` puts the two
together behind :func:`itnet_scale.ops.integrate`. ``M ≥ N`` enumerates every source and
reproduces the exact integral.
"""

from itnet_scale.ops.montecarlo.estimator import (
    integral_transform_montecarlo,
    proposal_loss,
    sampled_inputs,
    select_blocks,
)
from itnet_scale.ops.montecarlo.integrator import integrate_montecarlo
from itnet_scale.ops.montecarlo.proposals import BlockLayout, Samples, learned, uniform, window

__all__ = [
    "BlockLayout",
    "Samples",
    "integral_transform_montecarlo",
    "integrate_montecarlo",
    "learned",
    "proposal_loss",
    "sampled_inputs",
    "select_blocks",
    "uniform",
    "window",
]
