"""Training FLOPs of a model, for model FLOPs utilization (MFU) — an estimate in the usual spirit (6 × parameters ×
tokens, plus the sequence mixer), not a count of what the kernels execute.

Per token of a sequence of ``N`` tokens, forward + backward (× 3 of the forward's 2 FLOPs per multiply-add):

- ``6 × P`` for the ``P`` trainable parameters every token multiplies (every parameter but the embedding tables),
  ``4 ×`` for a frozen one (its backward passes the gradient on to its input but computes none for itself);
- per integral transform, per head, per source it sees: ``6 × (d + e + 1.5·r·depth)`` — the bilinear dot
  (``d``), the kernel MLP (``r`` adds, ``σ`` and the dot with ``w2``, once per hidden layer) and the weighted value
  (``e``). The sources per query: ``N`` for ``all``, ``N/2`` causal, ``min(N, 2·size + 1)`` for windows and radii
  (their 1-D extent; an image's window holds more), ``R`` for low rank (the feature dimension), ``M`` for
  Monte Carlo (the samples).
"""

from __future__ import annotations

from torch import nn

from itnet_scale.models.summary import parameter_size
from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.ops import LowRank, MonteCarlo


def _sources(layer: IntegralTransform, length: int) -> float:
    if isinstance(layer.integrator, LowRank):
        return float(layer.features.rank)
    if isinstance(layer.integrator, MonteCarlo):
        return float(min(layer.integrator.samples, length))
    support, size = layer.spec.support, layer.spec.support_size
    if support == "all":
        return float(length)
    if support == "causal":
        return length / 2
    return float(min(length, 2 * size + 1))


class TrainingFlops:
    """``flops(tokens, length)``: training FLOPs (forward + backward) of ``tokens`` tokens in sequences of ``length``
    through ``model`` (its parameters and transforms are read once, here)."""

    def __init__(self, model: nn.Module) -> None:
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        self.dense = sum((6.0 if p.requires_grad else 4.0) * parameter_size(p) for p in model.parameters()
                         if id(p) not in tables)
        self.mixers = [module for module in model.modules() if isinstance(module, IntegralTransform)]

    def __call__(self, tokens: int, length: int) -> float:
        per_token = self.dense
        for module in self.mixers:
            d = module.head_dim if module.q_proj is not None else 0
            pair = d + module.value_dim + 1.5 * module.kernel.width * module.kernel.depth
            per_token += 6.0 * module.heads * _sources(module, length) * pair
        return per_token * tokens


def training_flops(model: nn.Module, tokens: int, length: int) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` tokens in sequences of ``length`` through ``model``."""
    return TrainingFlops(model)(tokens, length)
