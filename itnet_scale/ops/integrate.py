"""The one door: :func:`integrate` computes ``Σ_j K(i,j) v_j`` with any integrator and backend.

Every caller — the layer, sequence parallelism, the benchmarks — comes through here with the kernel's per-head
inputs (:class:`~itnet_scale.ops.KernelInputs`), its static choices (:class:`~itnet_scale.ops.KernelSpec`) and an
integrator setting (:data:`~itnet_scale.ops.settings.Integrator`). The inputs are checked once, here; each
integrator's forms sit behind it (:mod:`itnet_scale.ops.exact`, :mod:`itnet_scale.ops.lowrank`,
:mod:`itnet_scale.ops.montecarlo`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from itnet_scale.ops.exact import integrate_exact
from itnet_scale.ops.lowrank.integrator import integrate_lowrank
from itnet_scale.ops.lowrank.spec import FeatureMapFn
from itnet_scale.ops.montecarlo.integrator import integrate_montecarlo
from itnet_scale.ops.settings import Exact, Integrator, LowRank, check_is_integrator
from itnet_scale.ops.spec import KernelInputs, KernelSpec, check_inputs

EXACT = Exact()


class Integral(NamedTuple):
    """What :func:`integrate` returns.

    out: ``[B, H, Nq, e]``, ``Σ_j K(i,j) v_j`` per head.
    state: the recurrent state ``[B, H, R, e(+1)]`` a causal low-rank pass ends with (None otherwise).
    proposal_loss: the learned Monte Carlo proposal's loss when asked for (None otherwise).
    """

    out: Tensor
    state: Tensor | None = None
    proposal_loss: Tensor | None = None


def integrate(
    inputs: KernelInputs,
    kernel: KernelSpec,
    integrator: Integrator = EXACT,
    *,
    feature_map: FeatureMapFn | None = None,
    initial_state: Tensor | None = None,
    generator: torch.Generator | None = None,
    train_proposal: bool = False,
) -> Integral:
    """``Σ_j K(i,j) v_j`` (DESIGN §1) as ``integrator`` computes it.

    Args:
        inputs: the per-head tensors; a self-transform passes the same tensor as ``pos_q`` and ``pos_s``.
        kernel: mode, support, activation, offset table extent.
        integrator: :class:`Exact`, :class:`LowRank` or :class:`MonteCarlo` with its backend.
        feature_map: the layer's low-rank feature maps (``LowRank``, and ``MonteCarlo`` with a learned proposal).
        initial_state: ``LowRank`` with a causal support: the state the previous piece of the sequence left.
        generator: ``MonteCarlo``: where the draws come from (None: torch's global generator).
        train_proposal: ``MonteCarlo`` with a learned proposal: also return the proposal's loss.
    """
    check_inputs(inputs, kernel)
    check_is_integrator(integrator)
    if initial_state is not None and not (isinstance(integrator, LowRank) and kernel.causal):
        raise ValueError(f"initial_state needs the lowrank integrator with a causal support, not "
                         f"{integrator.name} with support {kernel.support!r}")
    if isinstance(integrator, Exact):
        return Integral(integrate_exact(inputs, kernel, integrator))
    if isinstance(integrator, LowRank):
        if feature_map is None:
            raise ValueError("the lowrank integrator needs the layer's feature maps (feature_map)")
        return Integral(*integrate_lowrank(inputs, kernel, integrator, feature_map, initial_state))
    out, loss = integrate_montecarlo(inputs, kernel, integrator, feature_map=feature_map, generator=generator,
                                     train_proposal=train_proposal)
    return Integral(out, proposal_loss=loss)
