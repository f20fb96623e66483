"""The optimizer: AdamW with decoupled weight decay on matrices only, whose step can be vetoed on every rank.

It is built here and handed to ``deepspeed.initialize(optimizer=...)`` (ZeRO 1–3 wrap it and call its ``step``
for their partitions), rather than named in the DeepSpeed JSON, so that a poisoned step is skipped identically at
every ZeRO stage (see :mod:`itnet_scale.train.step_guard`). Two implementations of the same update, one veto
(:class:`VetoableStep`): :class:`GuardedAdamW` (``torch.optim.AdamW``) where the optimizer states live with the
weights, and :func:`guarded_cpu_adam` (DeepSpeed's ``DeepSpeedCPUAdam``, its vectorized C++ AdamW, the optimizer
DeepSpeed requires for ZeRO-Offload) when they are offloaded to CPU memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from itnet_scale.train.param_groups import parameter_groups


@dataclass
class OptimizerSettings:
    """AdamW (``lr``, ``betas``, ``eps``, ``weight_decay``); the learning rate warms up linearly from
    ``lr / warmup_steps`` over ``warmup_steps`` steps, then decays on a cosine to ``min_lr_ratio × lr`` at the
    last step. Weight decay applies to weight matrices only, not to
    biases, norms, embeddings' positions or scalars (parameters with fewer than 2 dimensions).

    ``layer_decay`` (< 1: layer-wise learning-rate decay, for fine-tuning an ITNet model) scales a parameter's rate by
    ``layer_decay ** (depth + 1 − layer)`` (layer 0: the encoders, ``i + 1``: backbone block ``i``, ``depth + 1``:
    the final norm, pooling and head); ``head_lr_multiplier`` multiplies the head's (the parameters outside the
    ITNet trunk). Both 1: off (see :mod:`itnet_scale.train.param_groups`)."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    layer_decay: float = 1.0
    head_lr_multiplier: float = 1.0

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
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"optimizer.layer_decay must be in (0, 1] (1 = off), got {self.layer_decay}")
        if not self.head_lr_multiplier > 0.0:
            raise ValueError(f"optimizer.head_lr_multiplier must be > 0 (1 = off), got {self.head_lr_multiplier}")


class VetoableStep:
    """An optimizer mixin: steps are vetoed while ``skip_next`` is set (the caller clears it).

    A vetoed step leaves parameters and moments untouched (the update is never called, so no moment is even
    created) and sets ``overflow``, the attribute DeepSpeed's engine reads after ``optimizer.step()`` to count a
    skipped step and hold the LR schedule (ZeRO-0). Put it before the optimizer class in the bases.
    """

    skip_next: bool = False
    overflow: bool = False

    @torch.no_grad()
    def step(self, *args: Any, **kwargs: Any) -> Any:
        # The veto holds until the caller clears it: ZeRO 1–3 call step() once per parameter group or sub-group.
        self.overflow = self.skip_next
        if self.overflow:
            return None
        return super().step(*args, **kwargs)


class GuardedAdamW(VetoableStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` with the :class:`VetoableStep` veto."""


@functools.cache
def _guarded_cpu_adam_class() -> type:
    # DeepSpeed is imported when an offloading optimizer is built, not with this module (the config checks import
    # it): its import costs seconds and announces its accelerator.
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    class GuardedCPUAdam(VetoableStep, DeepSpeedCPUAdam):
        """``DeepSpeedCPUAdam`` (AdamW mode) with the :class:`VetoableStep` veto, on ``step`` and on the per
        sub-group ``step_subgroup`` some ZeRO-3 offload paths call."""

        def step_subgroup(self, *args: Any, **kwargs: Any) -> Any:
            self.overflow = self.skip_next
            if self.overflow:
                return None
            return super().step_subgroup(*args, **kwargs)

    GuardedCPUAdam.__module__ = __name__
    GuardedCPUAdam.__qualname__ = "GuardedCPUAdam"
    return GuardedCPUAdam


def guarded_cpu_adam(param_groups: list[dict[str, Any]], **kwargs: Any) -> torch.optim.Optimizer:
    """A ``GuardedCPUAdam``: DeepSpeed's ``DeepSpeedCPUAdam`` in AdamW mode (decoupled weight decay, per group) with
    the :class:`VetoableStep` veto. Its C++ op is built on first use (a C++ compiler and ninja;
    ``make venv`` builds it ahead)."""
    return _guarded_cpu_adam_class()(param_groups, adamw_mode=True, **kwargs)


def build_optimizer(model: nn.Module, settings: OptimizerSettings, offload: bool = False) -> torch.optim.Optimizer:
    """The vetoable AdamW over ``model``'s trainable parameters in the groups of
    :func:`~itnet_scale.train.param_groups.parameter_groups`: matrices with weight decay, everything else (biases,
    norms, scalars such as τ rates) without — and, with ``settings.layer_decay`` or ``head_lr_multiplier``, per
    learning-rate scale; each group starts at ``settings.lr × lr_scale``. ``offload``: the optimizer states live in
    CPU memory (ZeRO-Offload), so DeepSpeed's CPU Adam (:func:`guarded_cpu_adam`); else :class:`GuardedAdamW`."""
    groups = parameter_groups(model, settings.weight_decay, settings.layer_decay, settings.head_lr_multiplier)
    for group in groups:
        group["lr"] = settings.lr * group["lr_scale"]
    if offload:
        return guarded_cpu_adam(groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)
    return GuardedAdamW(groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)


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
    restore (DeepSpeed saves the scheduler's state with the engine), and skipped steps do not advance it. The factor
    multiplies every group's initial rate (``settings.lr × lr_scale``), so layer-wise decay holds at every step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = min(settings.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, settings.min_lr_ratio))
