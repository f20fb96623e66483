"""The Monte Carlo integrator from the exact kernel's inputs: draw sources per query block, then estimate.

The proposal of the :class:`~itnet_scale.ops.settings.MonteCarlo` setting draws ``samples`` sources per block of
``sample_block`` queries (:mod:`.proposals`); :mod:`.estimator` evaluates the exact kernel on them. A learned
proposal follows the layer's low-rank features (computed from detached inputs: its loss trains the feature maps
only, never the kernel it follows) and, in training, returns that loss for the objective.
"""

from __future__ import annotations

import torch
from torch import Tensor

from itnet_scale.ops.lowrank.spec import FeatureMapFn
from itnet_scale.ops.montecarlo.estimator import integral_transform_montecarlo, proposal_loss, sampled_inputs
from itnet_scale.ops.montecarlo.proposals import BlockLayout, Samples, learned, uniform, window
from itnet_scale.ops.settings import MonteCarlo
from itnet_scale.ops.spec import KernelInputs, KernelSpec, check_sequence_order

PROPOSAL_LOSS_BLOCKS = 8  # sampled (not enumerated) query blocks the learned proposal's loss is taken on


def integrate_montecarlo(inp: KernelInputs, spec: KernelSpec, setting: MonteCarlo, *,
                         feature_map: FeatureMapFn | None = None, generator: torch.Generator | None = None,
                         train_proposal: bool = False) -> tuple[Tensor, Tensor | None]:
    """``(out [B, H, Nq, e], the learned proposal's loss or None)``.

    A self-transform (``inp.pos_s is inp.pos_q``) with a causal support draws each block's sources from its causal
    prefix; the ``window`` proposal needs one. ``generator`` is where the draws come from (None: torch's global
    one); ``train_proposal`` asks for the learned proposal's loss.
    """
    _, _, Nq, Ns, _ = inp.shape
    self_transform = inp.pos_s is inp.pos_q
    causal = spec.causal and self_transform
    if causal:
        check_sequence_order(inp.pos_q, "the montecarlo integrator")
    bq = min(setting.sample_block, Nq)
    draw = _draw(inp, spec, setting, BlockLayout(Nq, Ns, bq, causal), self_transform, feature_map, generator)
    sampled = sampled_inputs(inp, draw, bq)
    loss = None
    if draw.log_prob is not None and train_proposal:
        rows = (~draw.enumerated).flatten().nonzero()[:, 0]
        if len(rows):
            pick = torch.randint(len(rows), (min(len(rows), PROPOSAL_LOSS_BLOCKS),), generator=generator,
                                 device=inp.v.device)
            loss = proposal_loss(sampled, spec, draw, rows[pick])
    return integral_transform_montecarlo(inp, spec, draw, bq, backend=setting.backend, sampled=sampled), loss


def check_proposal(setting: MonteCarlo, spec: KernelSpec, has_features: bool) -> None:
    """``ValueError`` unless a layer with ``spec`` (and feature maps if ``has_features``) can draw from
    ``setting``'s proposal."""
    if setting.proposal == "learned" and (spec.mode != "softmax" or not has_features):
        raise ValueError("proposal='learned' follows positive low-rank features: it needs mode='softmax' and the "
                         "layer's feature maps (rank=R)")


def _draw(inp: KernelInputs, spec: KernelSpec, setting: MonteCarlo, layout: BlockLayout, self_transform: bool,
          feature_map: FeatureMapFn | None, generator: torch.Generator | None) -> Samples:
    B, M, device = inp.shape[0], setting.samples, inp.v.device
    check_proposal(setting, spec, has_features=feature_map is not None)
    if setting.proposal == "uniform":
        return uniform(layout, B, M, device=device, generator=generator)
    if setting.proposal == "window":
        if not self_transform:
            raise ValueError("proposal='window' needs a self-transform (source=None)")
        return window(layout, B, M, setting.proposal_window, device=device, generator=generator)
    phi, psi = feature_map(inp, detach_inputs=True)
    return learned(layout, phi, psi, M, generator=generator)
