"""The optimizer's parameter groups: weight decay on matrices only, and layer-wise learning-rate decay.

Weight decay (:func:`applies_weight_decay`) applies to weight matrices and other tensors of 2 or more dimensions,
never to biases, norms, embeddings' positions or scalars such as τ rates (fewer than 2 dimensions).

Layer-wise learning-rate decay (BEiT, Bao et al. 2021; timm's ``param_groups_layer_decay``) fine-tunes a
pretrained model with smaller steps in its lower layers, which hold the most general features. The layer of a
parameter of an ITNet model (:func:`parameter_layers`; the model holds one :class:`~itnet_scale.models.itnet.ITNetModel`
of ``depth`` blocks, e.g. under ``itnet.``):

- ``0``: the modality encoders (``encoder.*``: token, patch and point embeddings, type embeddings, mask tokens);
- ``i + 1``: backbone block ``i`` (``backbone.blocks.i.*``);
- ``depth + 1``: everything above the blocks: the backbone's final norm, the pooling, and the task's head (every
  parameter outside the ITNet trunk, e.g. ``head.*``, ``mlm.*``, ``itc.*``).

A parameter of layer ``l`` learns at ``lr × layer_decay ** (depth + 1 − l)``, times ``head_lr_multiplier`` if it
belongs to the head (outside the trunk: a freshly initialized head often wants a larger rate than the pretrained
layers). A weight tied to the trunk (the MLM decoder tied to the token embedding) is the trunk's parameter.

Each group carries ``lr_scale`` (its share of the base learning rate) and starts at ``lr = base × lr_scale``; the
warm-up + cosine schedule (:func:`~itnet_scale.train.optimizer.build_lr_schedule`, a ``LambdaLR``) multiplies every
group's initial rate by the same factor, so the scale holds at every step. DeepSpeed keeps the groups as given
(ZeRO 1–3 flatten each group's parameters but step the inner optimizer group by group with its own ``lr`` and
``weight_decay``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from itnet_scale.models.itnet import ITNetModel

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")


def applies_weight_decay(parameter: torch.Tensor) -> bool:
    """Whether ``parameter`` is decayed: weight matrices and tensors of more dimensions, not biases, norms or
    scalars (fewer than 2 dimensions)."""
    return parameter.ndim >= 2


@dataclass(frozen=True)
class ParameterLayer:
    """Where a parameter sits for layer-wise decay: ``layer`` (0 = encoders, ``i + 1`` = block ``i``,
    ``depth + 1`` = above the blocks) and ``head`` (outside the ITNet trunk: the task's head)."""

    layer: int
    head: bool


def parameter_layers(model: nn.Module) -> tuple[dict[str, ParameterLayer], int]:
    """``({name: ParameterLayer}, depth)`` for every parameter of ``model`` (as ``named_parameters`` names it),
    which must hold exactly one :class:`~itnet_scale.models.itnet.ITNetModel` (see the module doc)."""
    trunks = [(name, module) for name, module in model.named_modules() if isinstance(module, ITNetModel)]
    if len(trunks) != 1:
        found = [name or "<the model itself>" for name, _ in trunks]
        raise ValueError(f"layer-wise learning-rate decay needs a model with exactly one ITNetModel (the encoders "
                         f"and backbone whose blocks give the layers); {type(model).__name__} has {len(trunks)}"
                         f"{': ' + ', '.join(found) if found else ''}")
    prefix, trunk = trunks[0]
    prefix = f"{prefix}." if prefix else ""
    depth = len(trunk.backbone.blocks)
    layers = {}
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            layers[name] = ParameterLayer(depth + 1, head=True)
            continue
        inner = name[len(prefix):]
        block = _BLOCK.match(inner)
        if inner.startswith("encoder."):
            layers[name] = ParameterLayer(0, head=False)
        elif block is not None:
            layers[name] = ParameterLayer(int(block.group(1)) + 1, head=False)
        else:
            layers[name] = ParameterLayer(depth + 1, head=False)
    return layers, depth


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                     head_lr_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups over ``model``'s trainable parameters: ``{"params", "weight_decay",
    "lr_scale"}`` each, the decayed groups first.

    With ``layer_decay == head_lr_multiplier == 1``: two groups, matrices with ``weight_decay`` and everything else
    without, both at scale 1 (any model). Otherwise one group per (learning-rate scale, decayed or not), from the
    top layer down (the trunk's groups of a layer before the head's), groups of equal scale and decay merged; the
    model must be an ITNet model (:func:`parameter_layers`).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] (1 = off), got {layer_decay}")
    if not head_lr_multiplier > 0.0:
        raise ValueError(f"head_lr_multiplier must be > 0 (1 = off), got {head_lr_multiplier}")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if layer_decay == 1.0 and head_lr_multiplier == 1.0:
        scales = {name: 1.0 for name, _ in trainable}
        order = {name: 0 for name, _ in trainable}
    else:
        layers, depth = parameter_layers(model)
        scales = {name: layer_decay ** (depth + 1 - layers[name].layer) * (head_lr_multiplier if layers[name].head
                                                                            else 1.0) for name, _ in trainable}
        # top layer first, the trunk's parameters of a layer before the head's
        order = {name: 2 * (depth + 1 - layers[name].layer) + layers[name].head for name, _ in trainable}
    keyed: dict[tuple[float, bool], dict[str, Any]] = {}
    for decayed in (True, False):
        members = [(name, p) for name, p in trainable if applies_weight_decay(p) == decayed]
        for name, parameter in sorted(members, key=lambda item: order[item[0]]):  # stable: model order within
            group = keyed.setdefault((scales[name], decayed), {
                "params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scales[name]})
            group["params"].append(parameter)
    return list(keyed.values())


def base_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The current base learning rate (that of a group at scale 1): the first group's ``lr / lr_scale``."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))
