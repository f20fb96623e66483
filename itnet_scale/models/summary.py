"""Parameter counts of a model: the total and the trainable ones (``requires_grad``), reported apart.

A frozen backbone (linear probing) or a frozen encoder trains a share of the parameters; the count of what trains
is what the optimizer holds and what the gradients cost, the total is what the checkpoint holds. Tied parameters
count once; a parameter DeepSpeed ZeRO-3 has partitioned (empty on this rank) counts at its full size
(``ds_numel``).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class ParameterCounts(NamedTuple):
    """``total`` parameters of a model and the ``trainable`` ones among them."""

    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        return f"{self.total / 1e6:.2f}M parameters, {self.trainable / 1e6:.2f}M trainable"


def parameter_size(parameter: nn.Parameter) -> int:
    """Elements of ``parameter``, at its full size under ZeRO-3 partitioning."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def count_parameters(model: nn.Module) -> ParameterCounts:
    """The total and trainable parameter counts of ``model`` (tied parameters once)."""
    total = trainable = 0
    for parameter in model.parameters():
        size = parameter_size(parameter)
        total += size
        trainable += size if parameter.requires_grad else 0
    return ParameterCounts(total, trainable)
