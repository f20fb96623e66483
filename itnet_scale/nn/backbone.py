"""The ITNet backbone: a stack of :class:`ITNetBlock`, each with its own transform settings, then a norm.

Every block takes a :class:`~itnet_scale.nn.block.TransformConfig` (kernel, integrator, sizes): one for all, or
one per block — e.g. local windows in the first layers and global mixing above::

    local = TransformConfig(KernelConfig(width=8, support="window", support_size=4.0))
    ITNetBackbone(192, 4, 4, pos_dim=3, transforms=[local, local, TransformConfig(), TransformConfig()])

(A model config writes the same with YAML overrides per layer range; :mod:`itnet_scale.models.config`.)

**Activation checkpointing** (``checkpoint_every``, 0 = off): in training, every ``k``-th block (blocks 0, k, 2k, …;
``k = 1``: all) keeps only its input and recomputes its activations in backward
(:func:`torch.utils.checkpoint.checkpoint`, non-reentrant). The recomputation replays the forward's random draws:
torch's global generators (dropout, drop path, Monte Carlo draws from the global generator) by the checkpoint's
``preserve_rng_state``, and a layer's own Monte Carlo ``generator`` by :func:`replayed_generators`, which sets it
back to its state at the block's forward and afterwards to where it was, so later draws do not repeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from itnet_scale.nn.block import ITNetBlock, TransformConfig
from itnet_scale.nn.integral_transform import IntegralTransform


def check_checkpoint_every(every: int, name: str = "checkpoint_every") -> int:
    """``every`` if it is a valid activation-checkpointing interval (an int >= 0; 0 = off), else ``ValueError``
    naming ``name``."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"{name} must be an int >= 0 (0 = off, 1 = every block, k = every k-th block), "
                         f"got {every!r}")
    return every


@contextlib.contextmanager
def replayed_generators(module: nn.Module, states: list[tuple[torch.Generator, Tensor]]) -> Iterator[None]:
    """Inside: each generator of ``states`` at its saved state, and each :class:`IntegralTransform` of ``module``
    keeps its ``proposal_loss``; on exit the generators return to where they were before (the recomputation of a
    checkpointed block must draw what its forward drew, and leave the next draws alone)."""
    current = [(generator, generator.get_state()) for generator, _ in states]
    losses = [(layer, layer.proposal_loss) for layer in module.modules() if isinstance(layer, IntegralTransform)]
    for generator, state in states:
        generator.set_state(state)
    try:
        yield
    finally:
        for generator, state in current:
            generator.set_state(state)
        for layer, loss in losses:
            layer.proposal_loss = loss


def layer_generators(module: nn.Module) -> list[torch.Generator]:
    """The distinct Monte Carlo generators set on ``module``'s :class:`IntegralTransform` layers."""
    found: dict[int, torch.Generator] = {}
    for layer in module.modules():
        if isinstance(layer, IntegralTransform) and layer.generator is not None:
            found.setdefault(id(layer.generator), layer.generator)
    return list(found.values())


def checkpointed_call(block: nn.Module, *args: Tensor | None) -> Tensor:
    """``block(*args)`` under non-reentrant activation checkpointing, random draws replayed on recomputation (see
    the module doc)."""
    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        states = [(generator, generator.get_state()) for generator in layer_generators(block)]
        return contextlib.nullcontext(), replayed_generators(block, states)

    return checkpoint(block, *args, use_reentrant=False, preserve_rng_state=True, context_fn=contexts)


class ITNetBackbone(nn.Module):
    """``depth`` :class:`ITNetBlock` of width ``dim`` and a final LayerNorm.

    Args:
        dim, depth, heads: width, number of blocks, heads per transform.
        pos_dim: the shared position space (3 for the encoders of :mod:`itnet_scale.nn.encoders`).
        mlp_ratio, dropout, norm_eps: as in :class:`ITNetBlock`.
        drop_path: stochastic depth of the last block; block ``i`` gets ``drop_path · i / (depth − 1)``.
        transforms: every block's transform, or one per block.
        checkpoint_every: activation checkpointing of every k-th block in training (0 = off, 1 = all; see the
            module doc); an attribute, settable on a built backbone.

    ``forward(tokens [B, N, dim], pos [B, N, pos_dim], padding_mask [B, N] | None) → [B, N, dim]``.
    """

    def __init__(self, dim: int, depth: int, heads: int, *, pos_dim: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 transforms: TransformConfig | Sequence[TransformConfig] | None = None,
                 checkpoint_every: int = 0) -> None:
        super().__init__()
        self.checkpoint_every = check_checkpoint_every(checkpoint_every)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if transforms is None or isinstance(transforms, TransformConfig):
            transforms = [transforms or TransformConfig()] * depth
        if len(transforms) != depth:
            raise ValueError(f"transforms: {len(transforms)} given for depth={depth} (one, or one per block)")
        blocks = []
        for index, transform in enumerate(transforms):
            try:
                blocks.append(ITNetBlock(dim, heads, pos_dim=pos_dim, mlp_ratio=mlp_ratio, dropout=dropout,
                                         drop_path=drop_path * index / max(depth - 1, 1), norm_eps=norm_eps,
                                         transform=transform))
            except ValueError as error:  # a value the layer refuses: name the layer
                raise ValueError(f"layer {index}: {error}") from None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def checkpointed_blocks(self) -> list[int]:
        """The indices of the blocks that recompute their activations in a training backward."""
        every = check_checkpoint_every(self.checkpoint_every)
        return list(range(0, len(self.blocks), every)) if every else []

    def forward(self, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        recompute = set(self.checkpointed_blocks()) if self.training and torch.is_grad_enabled() else set()
        for index, block in enumerate(self.blocks):
            if index in recompute:
                tokens = checkpointed_call(block, tokens, pos, padding_mask)
            else:
                tokens = block(tokens, pos, padding_mask)
        return self.norm(tokens)


def configure_activation_checkpointing(model: nn.Module, every: int) -> int:
    """Set ``checkpoint_every`` (0 = off, 1 = every block, k = every k-th block) on every :class:`ITNetBackbone`
    in ``model``; returns how many."""
    check_checkpoint_every(every, "activation checkpointing 'every'")
    backbones = [m for m in model.modules() if isinstance(m, ITNetBackbone)]
    for backbone in backbones:
        backbone.checkpoint_every = every
    return len(backbones)
