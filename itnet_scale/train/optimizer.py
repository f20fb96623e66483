"""The optimizer: AdamW with decoupled weight decay on matrices only, whose step can be vetoed on every rank.

It is built here and handed to ``deepspeed.initialize(optimizer=...)`` (ZeRO 1–3 wrap it and call its ``step``
for their partitions), rather than named in the DeepSpeed JSON, so that :class:`GuardedAdamW` can skip a
poisoned step identically at every ZeRO stage (see :mod:`itnet_scale.train.step_guard`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class OptimizerSettings:
    """AdamW (``lr``, ``betas``, ``eps``, ``weight_decay``); the learning rate warms up linearly from
    ``lr / warmup_steps`` over ``warmup_steps`` steps, then decays on a cosine to ``min_lr_ratio × lr`` at the
    last step. Weight decay applies to weight matrices only, not to
    biases, norms, embeddings' positions or scalars (parameters with fewer than 2 dimensions)."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(f"optimizer.eps must be > 0 and weight_decay >= 0, got {self.eps}, {self.weight_decay}")
        if self.warmup_steps < 1:
            raise ValueError(f"optimizer.warmup_steps must be >= 1, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


class GuardedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose steps are vetoed while ``skip_next`` is set (the caller clears it).

    A vetoed step leaves parameters and moments untouched and sets ``overflow``, the attribute DeepSpeed's
    engine reads after ``optimizer.step()`` to count a skipped step and hold the LR schedule (ZeRO-0).
    """

    def __init__(self, params: Iterable, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.skip_next = False
        self.overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        # The veto holds until the caller clears it: ZeRO 1–2 call step() once per parameter group.
        self.overflow = self.skip_next
        if self.overflow:
            return None
        return super().step(closure)


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> GuardedAdamW:
    """A :class:`GuardedAdamW` over ``model``'s trainable parameters in two groups: matrices with weight decay,
    everything else (biases, norms, scalars such as τ rates) without."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return GuardedAdamW([g for g in groups if g["params"]], lr=settings.lr, betas=tuple(settings.betas),
                        eps=settings.eps)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): ``(step + 1) / warmup_steps`` during
    warm-up, then a cosine from 1 down to ``min_lr_ratio`` at ``total_steps - 1``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps + 1) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_schedule(optimizer: torch.optim.Optimizer, settings: OptimizerSettings,
                      total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule as a ``LambdaLR`` handed to ``deepspeed.initialize(lr_scheduler=...)``.

    Not DeepSpeed's ``WarmupCosineLR``: it sets the learning rate of the very first step to 0 (it is stepped
    only after each update), so a run's first batch would teach nothing; this schedule is also what checkpoints
    restore (DeepSpeed saves the scheduler's state with the engine), and skipped steps do not advance it.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = min(settings.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, settings.min_lr_ratio))
