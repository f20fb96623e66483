"""Sequence parallelism for a whole model: the backbone runs sharded, encoders and heads see whole sequences.

``apply_sequence_parallel(model, sp)`` makes every :class:`~itnet_scale.nn.backbone.ITNetBackbone` in ``model``
run over ``sp.group``. Per forward of the backbone (``tokens`` ``[B, N, dim]``):

1. the encoders ran on the whole sequence on every rank (replicated; they are cheap and position-wise);
2. the sequence is padded to ``N' = ⌈N/P⌉·P`` — zero tokens, marked in ``padding_mask`` so no real token ever
   sees them, at positions continuing the last one along the first axis (causal scans need it increasing);
3. rank ``r`` keeps positions ``[r·N'/P, (r+1)·N'/P)``; every block runs on that shard, its transform through
   :class:`~itnet_scale.parallel.ulysses.SequenceParallelIntegralTransform` (exact: Ulysses all-to-alls;
   causal lowrank: the carried state), its norms and MLP position-wise on the shard;
4. the final norm runs on the shard, the shards are all-gathered (differentiably) and the padding dropped:
   the backbone returns ``[B, N, dim]``, the same on every rank, so heads and losses run unchanged.

Parameter names and ``state_dict`` keys do not change: the sequence-parallel wrappers live outside module
registration (in :class:`SequenceShards`, a plain attribute of the backbone). For ZeRO 3, the parameters a
wrapper reads directly are registered as external parameters of their block, so DeepSpeed gathers them for
the block's forward and backward.

Every rank of a group must call the model together on the same batch (the collectives pair up), with the
same random draws: dropout and drop path run on the shards, so a run with them on seeds its ranks by
``sp.data_parallel_rank`` (drop path then drops a sample on every shard alike; the dropout masks of the shards
repeat). The loss is replicated; see :mod:`itnet_scale.parallel.groups` for ``sp.loss_scale``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from deepspeed.runtime.zero.partition_parameters import register_external_parameter, unregister_external_parameter
from torch import Tensor, nn

from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.integral_transform import IntegralTransform
from itnet_scale.parallel.groups import SequenceParallel, check_sequence_parallel_size
from itnet_scale.parallel.ulysses import SequenceParallelIntegralTransform, gather_sequence, shard_sequence


def sequence_parallel_problem(layer: IntegralTransform, size: int) -> str | None:
    """Why ``layer`` cannot run over ``size`` ranks, or None if it can."""
    if size == 1:
        return None
    if layer.integrator == "exact":
        if layer.heads % size:
            return (f"heads={layer.heads} is not divisible by sequence_parallel_size={size} (Ulysses gives each "
                    "rank heads/size heads of an exact layer)")
        return None
    if layer.integrator == "lowrank":
        if not layer.spec.causal:
            return (f"integrator='lowrank' with support={layer.spec.support!r} is not causal: only the causal scan "
                    "has a state to carry across ranks (use support='causal', or integrator='exact')")
        return None
    return (f"integrator={layer.integrator!r} cannot be sequence-parallel: it draws its sources from the whole "
            "sequence, which no rank holds (use integrator='exact', or 'lowrank' with a causal support)")


def check_sequence_parallel(model: nn.Module, size: int) -> list[ITNetBackbone]:
    """The backbones of ``model`` after checking every layer can run over ``size`` ranks; otherwise one
    ``ValueError`` naming each layer that cannot, and why."""
    check_sequence_parallel_size(size)
    backbones = [(name, m) for name, m in model.named_modules() if isinstance(m, ITNetBackbone)]
    if not backbones:
        raise ValueError(f"sequence parallelism: {type(model).__name__} holds no ITNetBackbone")
    problems = []
    for name, backbone in backbones:
        where = f"{name}: " if len(backbones) > 1 else ""
        for index, block in enumerate(backbone.blocks):
            problem = sequence_parallel_problem(block.mixer, size)
            if problem is not None:
                problems.append(f"{where}layer {index}: {problem}")
    if problems:
        raise ValueError(f"sequence_parallel_size={size} cannot run this model: " + "; ".join(problems))
    return [backbone for _, backbone in backbones]


class SequenceShards:
    """What a backbone runs over a sequence-parallel group: :meth:`shard` its inputs, ``mixers[i]`` for block
    ``i``, :meth:`gather` its output. Not a module, so nothing here registers parameters (the wrappers hold
    the blocks' own transforms)."""

    def __init__(self, sp: SequenceParallel, layers: list[IntegralTransform]) -> None:
        self.sp = sp
        self.mixers = [SequenceParallelIntegralTransform(layer, sp.group) for layer in layers]

    def shard(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """This rank's ``(tokens [B, N'/P, dim], pos [B, N'/P, pos_dim], padding_mask [B, N'/P] | None)`` of the
        sequence padded to ``N'``, a multiple of the group size (the padding is marked in the mask)."""
        B, N, _ = tokens.shape
        if pos.dim() == 2:
            pos = pos.expand(B, *pos.shape)
        pad = -N % self.sp.size
        if pad:
            step = torch.zeros(pos.shape[-1], dtype=pos.dtype, device=pos.device)
            step[0] = 1
            offsets = torch.arange(1, pad + 1, dtype=pos.dtype, device=pos.device)[:, None] * step  # [pad, P]
            pos = torch.cat([pos, pos[:, -1:] + offsets], dim=1)
            tokens = F.pad(tokens, (0, 0, 0, pad))
            if padding_mask is None:
                padding_mask = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
            padding_mask = F.pad(padding_mask, (0, pad), value=True)
        group = self.sp.group
        return (shard_sequence(tokens, group), shard_sequence(pos, group),
                None if padding_mask is None else shard_sequence(padding_mask, group))

    def gather(self, shard: Tensor, length: int) -> Tensor:
        """The whole ``[B, length, dim]`` from every rank's ``shard`` (padding dropped); differentiable."""
        return gather_sequence(shard, self.sp.group)[:, :length]

    def __deepcopy__(self, memo: dict) -> SequenceShards:
        """A copied model gets wrappers around its own (copied) transforms, over the same groups."""
        return SequenceShards(self.sp, [copy.deepcopy(mixer.layer, memo) for mixer in self.mixers])


def apply_sequence_parallel(model: nn.Module, sp: SequenceParallel) -> nn.Module:
    """Make every :class:`ITNetBackbone` in ``model`` run sharded over ``sp.group`` (see the module doc);
    ``sp.size == 1`` undoes it. Every layer is checked first (:func:`check_sequence_parallel`). Returns
    ``model`` (changed in place; its parameters and ``state_dict`` keys are untouched)."""
    if sp.size == 1:
        return remove_sequence_parallel(model)
    backbones = check_sequence_parallel(model, sp.size)
    remove_sequence_parallel(model)
    for backbone in backbones:
        for block in backbone.blocks:
            for parameter in block.mixer.parameters():  # ZeRO 3: gathered for the block (see the module doc)
                if parameter.numel():  # (ZeRO 3 cannot gather an empty one; nothing reads it)
                    register_external_parameter(block, parameter)
        backbone.sequence_parallel = SequenceShards(sp, [block.mixer for block in backbone.blocks])
    return model


def remove_sequence_parallel(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_sequence_parallel`: every backbone of ``model`` runs whole again. Returns ``model``."""
    for backbone in model.modules():
        if isinstance(backbone, ITNetBackbone) and backbone.sequence_parallel is not None:
            for block in backbone.blocks:
                for parameter in block.mixer.parameters():
                    if id(parameter) in getattr(block, "_external_params", {}):
                        unregister_external_parameter(block, parameter)
            backbone.sequence_parallel = None
    return model
