"""Skipping poisoned steps: one decision for all ranks, taken before the update, counted per reason.

Each rank reports what it saw this optimizer step — a non-finite loss in any micro-batch, a non-finite
gradient, or (optionally) a loss spike above ``spike_factor ×`` the running mean of accepted losses — and a
MAX all-reduce makes the decision global, so every rank skips the same steps and the replicas never diverge.
A skipped step changes neither the weights nor the optimizer state (the optimizer's
:class:`~itnet_scale.train.optimizer.VetoableStep` returns without updating), and since checkpoints are only
written after applied steps, a checkpoint never comes from a poisoned state.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

#: Skip reasons, as bit flags so a MAX all-reduce of their OR keeps the most severe.
NONFINITE_LOSS, NONFINITE_GRAD, LOSS_SPIKE = 4, 2, 1
REASONS = {NONFINITE_LOSS: "nonfinite_loss", NONFINITE_GRAD: "nonfinite_grad", LOSS_SPIKE: "loss_spike"}


class StepGuard:
    """Decides, identically on every rank, whether an optimizer step is applied.

    ``spike_factor`` (0 = off) skips steps whose global mean loss exceeds ``spike_factor ×`` the mean of the
    last ``spike_window`` accepted losses, once ``spike_warmup`` losses were accepted.
    """

    def __init__(self, spike_factor: float = 0.0, spike_window: int = 100, spike_warmup: int = 20) -> None:
        if spike_factor < 0 or (0 < spike_factor <= 1):
            raise ValueError(f"spike_factor must be 0 (off) or > 1, got {spike_factor}")
        self.spike_factor = spike_factor
        self.spike_warmup = spike_warmup
        self.history: deque[float] = deque(maxlen=spike_window)
        self.skipped: Counter[str] = Counter()

    def state_dict(self) -> dict[str, Any]:
        """The running loss history and skip counts (checkpointed, so a resumed run judges spikes the same)."""
        return {"history": list(self.history), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(float(v) for v in state["history"])
        self.skipped = Counter({str(k): int(v) for k, v in state["skipped"].items()})

    def decide(self, loss: torch.Tensor, grads: Iterable[torch.Tensor | None] = ()) -> str | None:
        """The reason to skip this step (``None``: apply it). ``loss`` is this rank's loss for the step (any
        shape; non-finite anywhere counts), ``grads`` the gradients this rank holds (may be partitions)."""
        loss = loss.detach().float()
        flags = 0
        if not bool(torch.isfinite(loss).all()):
            flags |= NONFINITE_LOSS
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
            flags |= NONFINITE_GRAD
        mean_loss = float(loss.mean()) if flags == 0 else 0.0
        summary = torch.tensor([float(flags), mean_loss, 1.0], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            flag = summary[:1].clone()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            total = summary[1:].clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            summary = torch.cat([flag, total])
        flags = int(summary[0])
        if flags == 0 and self.spike_factor > 0 and len(self.history) >= self.spike_warmup:
            global_loss = float(summary[1] / summary[2])
            if global_loss > self.spike_factor * (sum(self.history) / len(self.history)):
                flags |= LOSS_SPIKE
        if flags == 0:
            self.history.append(float(summary[1] / summary[2]))
            return None
        reason = REASONS[max(bit for bit in REASONS if flags & bit)]
        self.skipped[reason] += 1
        logger.warning("skipping the optimizer step (%s); skipped so far: %s", reason, dict(self.skipped))
        return reason


def guarded_step(engine: Any, optimizer: Any, reason: str | None) -> bool:
    """``engine.step()`` with the update vetoed when ``reason`` is set; True if the weights were updated.

    A vetoed step also leaves the learning-rate schedule where it was.

    ``optimizer`` is the :class:`~itnet_scale.train.optimizer.VetoableStep` optimizer given to
    ``deepspeed.initialize``.
    The veto is cleared afterwards even when DeepSpeed's own overflow check (ZeRO 1–3) skipped the step before
    calling it, so it never leaks into the next step.
    """
    schedule = engine.lr_scheduler
    position = getattr(schedule, "last_epoch", None)
    optimizer.skip_next = reason is not None
    try:
        engine.step()
    finally:
        optimizer.skip_next = False
    if reason is not None and position is not None and schedule.last_epoch != position:
        # ZeRO 1–3 wrap our optimizer, so DeepSpeed does not see the veto and steps the schedule: undo that.
        schedule.last_epoch = position - 1
        schedule.step()
    return reason is None and engine.was_step_applied()
