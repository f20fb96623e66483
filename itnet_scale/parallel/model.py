"""Sequence parallelism for a whole model: the backbone runs sharded, encoders and heads see whole sequences.

``apply_sequence_parallel(model, sp)`` makes every :class:`~itnet_scale.nn.backbone.ITNetBackbone` in ``model``
run over ``sp.group``, from outside the model, as torchtitan's parallelize step and ``fully_shard`` do: each
backbone's class becomes :class:`SequenceParallelBackbone` and each of its transforms'
:class:`~itnet_scale.parallel.ulysses.SequenceParallelIntegralTransform`, so :mod:`itnet_scale.nn` knows nothing
of it and parameter names and ``state_dict`` keys do not change. Per forward of the backbone (``tokens``
``[B, N, dim]``):

1. the encoders ran on the whole sequence on every rank (replicated; they are cheap and position-wise);
2. the sequence is padded to ``N' = ⌈N/P⌉·P`` — zero tokens, marked in ``padding_mask`` so no real token ever
   sees them, at positions continuing the last one along the first axis (causal scans need it increasing);
3. rank ``r`` keeps positions ``[r·N'/P, (r+1)·N'/P)``; every block runs on that shard, its transform over the
   group (exact: Ulysses all-to-alls; causal lowrank: the carried state), its norms and MLP position-wise;
4. the final norm runs on the shard, the shards are all-gathered (differentiably) and the padding dropped:
   the backbone returns ``[B, N, dim]``, the same on every rank, so heads and losses run unchanged.

Every transform is called as its own module, as without sequence parallelism, so ZeRO 3 gathers its parameters
the same way.

Every rank of a group must call the model together on the same batch (the collectives pair up), with the
same random draws: dropout and drop path run on the shards, so a run with them on seeds its ranks by
``sp.data_parallel_rank`` (drop path then drops a sample on every shard alike; the dropout masks of the shards
repeat). The loss is replicated; see :mod:`itnet_scale.parallel.groups` for ``sp.loss_scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.parallel.groups import SequenceParallel, check_sequence_parallel_size
from itnet_scale.parallel.ulysses import (
    gather_sequence,
    parallelize_transform,
    shard_sequence,
    transform_problem,
    unparallelize_transform,
)


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
            problem = transform_problem(block.mixer, size)
            if problem is not None:
                problems.append(f"{where}layer {index}: {problem}")
    if problems:
        raise ValueError(f"sequence_parallel_size={size} cannot run this model: " + "; ".join(problems))
    return [backbone for _, backbone in backbones]


class SequenceParallelBackbone(ITNetBackbone):
    """An :class:`ITNetBackbone` whose blocks run on this rank's shard of the sequence (made by
    :func:`apply_sequence_parallel`; see the module doc). ``forward`` takes and returns whole sequences."""

    sequence_parallel: SequenceParallel

    def forward(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        length = tokens.shape[1]
        tokens, pos, padding_mask = self.shard(tokens, pos, padding_mask)
        return gather_sequence(super().forward(tokens, pos, padding_mask), self.sequence_parallel.group)[:, :length]

    def shard(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """This rank's ``(tokens [B, N'/P, dim], pos [B, N'/P, pos_dim], padding_mask [B, N'/P] | None)`` of the
        sequence padded to ``N'``, a multiple of the group size (the padding is marked in the mask)."""
        B, N, _ = tokens.shape
        if pos.dim() == 2:
            pos = pos.expand(B, *pos.shape)
        sp = self.sequence_parallel
        pad = -N % sp.size
        if pad:
            step = torch.zeros(pos.shape[-1], dtype=pos.dtype, device=pos.device)
            step[0] = 1
            offsets = torch.arange(1, pad + 1, dtype=pos.dtype, device=pos.device)[:, None] * step  # [pad, P]
            pos = torch.cat([pos, pos[:, -1:] + offsets], dim=1)
            tokens = F.pad(tokens, (0, 0, 0, pad))
            if padding_mask is None:
                padding_mask = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
            padding_mask = F.pad(padding_mask, (0, pad), value=True)
        return (shard_sequence(tokens, sp.group), shard_sequence(pos, sp.group),
                None if padding_mask is None else shard_sequence(padding_mask, sp.group))


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
            parallelize_transform(block.mixer, sp.group)
        backbone.__class__ = SequenceParallelBackbone
        backbone.sequence_parallel = sp
    return model


def remove_sequence_parallel(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_sequence_parallel`: every backbone of ``model`` runs whole again. Returns ``model``."""
    for backbone in model.modules():
        if isinstance(backbone, SequenceParallelBackbone):
            for block in backbone.blocks:
                unparallelize_transform(block.mixer)
            del backbone.sequence_parallel
            backbone.__class__ = ITNetBackbone
    return model
