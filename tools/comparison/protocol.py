"""The protocol: every model of a task trained on the same budget (steps, batch, AdamW with linear warm-up then
cosine decay, gradient clipping), a sweep of learning rates at the first seed picked on the validation split,
then the other seeds at the chosen rate; the report gives the test metric's mean ± std over the seeds.

The scikit-learn baselines follow the same protocol with their inverse regularization ``C`` in the learning
rate's place (:data:`LINEAR_C`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .models import model_parameters_for_report, score_sums, task_loss
from .tasks import Split, TaskData

#: The inverse regularization strengths the linear baselines sweep in the learning rates' place.
LINEAR_C = (0.1, 1.0, 10.0)
EVAL_BATCH = 256


@dataclass(frozen=True)
class Budget:
    """What every neural model of a task gets: ``steps`` AdamW steps of ``batch`` samples, ``warmup`` of them
    linear warm-up (a fraction), then cosine decay to 0; ``weight_decay``; gradient norm clipped at ``clip``."""

    steps: int = 300
    batch: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.05
    clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")


@dataclass
class RunResult:
    """One training run: the model on the task at ``hyper`` (learning rate, or ``C``) and ``seed``."""

    task: str
    model: str
    hyper: float
    seed: int
    params: int
    train_loss: float
    val_metric: float
    test_metric: float
    wall_s: float
    extra_tests: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProtocolResult:
    """Every run of one model on one task, and the hyperparameter picked on validation."""

    task: str
    model: str
    chosen: float
    sweep: list[RunResult]
    seeds: list[RunResult]

    def test_metrics(self) -> list[float]:
        return [run.test_metric for run in self.seeds]


Trainer = Callable[[float, int], RunResult]


def run_protocol(task: str, model: str, trainer: Trainer, hypers: list[float], seeds: list[int],
                 higher_is_better: bool) -> ProtocolResult:
    """Sweep ``hypers`` at ``seeds[0]``, pick the best validation metric, run ``seeds[1:]`` at it. The seed
    results are the chosen sweep run and those."""
    if not hypers or not seeds:
        raise ValueError("the protocol needs at least one learning rate and one seed")
    sweep = [trainer(hyper, seeds[0]) for hyper in hypers]
    sign = 1.0 if higher_is_better else -1.0
    best = max(sweep, key=lambda run: sign * run.val_metric if math.isfinite(run.val_metric) else -math.inf)
    rest = [trainer(best.hyper, seed) for seed in seeds[1:]]
    return ProtocolResult(task, model, best.hyper, sweep, [best, *rest])


def evaluate(model: nn.Module, task: TaskData, split: Split) -> float:
    """The task's metric on ``split`` (model in eval mode, no gradients)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), EVAL_BATCH):
            output = model(split.inputs[start:start + EVAL_BATCH])
            batch_total, batch_count = score_sums(task, output, split.targets[start:start + EVAL_BATCH])
            total, count = total + batch_total, count + batch_count
    return total / max(count, 1)


def train_neural(name: str, build: Callable[[], nn.Module], task: TaskData, budget: Budget, lr: float,
                 seed: int, progress: bool = True,
                 keep: Callable[[nn.Module, float, int], None] | None = None) -> RunResult:
    """Train ``build()`` (seeded) on ``task`` for the budget at learning rate ``lr``; score validation and test.
    The reported training loss is the mean over the last 10% of the steps. A non-finite loss ends the run with
    NaN metrics (the sweep then passes over that rate). ``keep(model, lr, seed)`` receives the trained model."""
    torch.manual_seed(seed)
    model = build()
    params = model_parameters_for_report(model, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=budget.weight_decay)
    warm = int(budget.warmup * budget.steps)
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(budget.steps - warm, 1))]
    if warm:
        schedules.insert(0, torch.optim.lr_scheduler.LinearLR(optimizer, 1.0 / warm, 1.0, total_iters=warm))
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedules, milestones=[warm] if warm else [])
    sampler = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(budget.steps), desc=f"{task.name}/{name} lr={lr:g} seed={seed}", leave=False,
                  disable=not progress):
        rows = torch.randint(len(task.train), (budget.batch,), generator=sampler)
        loss = task_loss(task, model(task.train.inputs[rows]), task.train.targets[rows])
        if not torch.isfinite(loss):
            nan = float("nan")
            return RunResult(task.name, name, lr, seed, params, nan, nan, nan, time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), budget.clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    wall = time.perf_counter() - start
    tail = losses[-max(1, budget.steps // 10):]
    extra = {key: evaluate(model, task, split) for key, split in task.extra_tests.items()}
    if keep is not None:
        keep(model, lr, seed)
    return RunResult(task.name, name, lr, seed, params, float(np.mean(tail)), evaluate(model, task, task.val),
                     evaluate(model, task, task.test), wall, extra)


def linear_features(name: str, task: TaskData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test features of a linear baseline: flattened pixels (``logreg``) or TF-IDF of the
    raw text (``tfidf``, word uni- and bigrams fitted on the training split)."""
    if name == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        train = vectorizer.fit_transform(task.texts["train"])
        return train, vectorizer.transform(task.texts["val"]), vectorizer.transform(task.texts["test"])
    return tuple(split.inputs.flatten(1).numpy() for split in (task.train, task.val, task.test))


def train_linear(name: str, task: TaskData, c: float, seed: int) -> RunResult:
    """scikit-learn's logistic regression (lbfgs, ``C=c``) on :func:`linear_features`; params = coefficients +
    intercepts."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    train, val, test = linear_features(name, task)
    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit(train, task.train.targets.numpy())
    probabilities = model.predict_proba(train)
    labels = task.train.targets.numpy()
    train_loss = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).mean())
    params = int(model.coef_.size + model.intercept_.size)
    val_acc = float((model.predict(val) == task.val.targets.numpy()).mean())
    test_acc = float((model.predict(test) == task.test.targets.numpy()).mean())
    return RunResult(task.name, name, c, seed, params, train_loss, val_acc, test_acc, time.perf_counter() - start)
