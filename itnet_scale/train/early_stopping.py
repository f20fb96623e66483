"""Early stopping with patience, and which evaluation is the best so far (the checkpoint to keep).

The caller evaluates, reads the tracked metric (a benchmark's ``primary_metric``) and calls
:meth:`EarlyStopping.update`; the answer says whether this evaluation is the new best — save the best checkpoint
now — and whether to stop. An evaluation improves on the best when it beats it by more than ``min_delta``
(``mode: max``: higher is better; ``min``: lower); a NaN never improves. Training stops after ``patience``
evaluations in a row without improvement (0: never stops; the best is still tracked). The first evaluation (that is
not NaN) is always the best so far.

:meth:`EarlyStopping.state_dict` is plain numbers (checkpoint client state, read weights-only) and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

MODES = ("max", "min")


@dataclass
class EarlyStoppingSettings:
    """``mode``: ``max`` (accuracy, F1, correlation) or ``min`` (a loss, an error); ``patience``: evaluations
    without improvement before stopping (0 = never stop); ``min_delta``: the least change that counts as an
    improvement."""

    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"early_stopping.mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"early_stopping.patience must be an int >= 0 (0 = never stop), got {self.patience!r}")
        if not self.min_delta >= 0.0:
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {self.min_delta}")


class EarlyStoppingDecision(NamedTuple):
    """What one evaluation means: ``improved`` (the new best: save the best checkpoint) and ``stop``."""

    improved: bool
    stop: bool


class EarlyStopping:
    """Tracks one metric over evaluations with ``settings`` (see the module doc). ``best`` / ``best_step``: the
    best value so far and the step the caller gave with it (None before the first evaluation);
    ``bad_evaluations``: evaluations since the last improvement."""

    def __init__(self, settings: EarlyStoppingSettings) -> None:
        self.settings = settings
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0
        self.evaluations = 0

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta`` (always, before the first evaluation; never
        for NaN)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.settings.mode == "max":
            return value > self.best + self.settings.min_delta
        return value < self.best - self.settings.min_delta

    @property
    def should_stop(self) -> bool:
        return self.settings.patience > 0 and self.bad_evaluations >= self.settings.patience

    def update(self, value: float, step: int) -> EarlyStoppingDecision:
        """Record the evaluation at ``step`` whose tracked metric is ``value``."""
        value = float(value)
        improved = self.improves(value)
        self.evaluations += 1
        if improved:
            self.best, self.best_step, self.bad_evaluations = value, int(step), 0
        else:
            self.bad_evaluations += 1
        return EarlyStoppingDecision(improved, self.should_stop)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.settings.mode, "best": self.best, "best_step": self.best_step,
                "bad_evaluations": self.bad_evaluations, "evaluations": self.evaluations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a state tracked in the other mode is refused (its best would be the
        worst)."""
        try:
            mode, best, best_step = state["mode"], state["best"], state["best_step"]
            bad, evaluations = int(state["bad_evaluations"]), int(state["evaluations"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"early-stopping state is malformed ({type(error).__name__}: {error})") from None
        if mode != self.settings.mode:
            raise ValueError(f"early-stopping state was tracked with mode={mode!r}; this run has "
                             f"early_stopping.mode={self.settings.mode!r}")
        self.best = None if best is None else float(best)
        self.best_step = None if best_step is None else int(best_step)
        self.bad_evaluations, self.evaluations = bad, evaluations
