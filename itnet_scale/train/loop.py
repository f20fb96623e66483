"""The trainer core: one DeepSpeed training loop that every recipe (pretraining, fine-tuning) runs on.

:class:`Trainer` owns what does not depend on the task, and sets it up in this order: the process group
(DeepSpeed's; gloo on CPU), the sequence-parallel groups, the model the recipe builds (same seed on every rank)
and its initial weights, activation checkpointing, the optimizer and schedule, the DeepSpeed engine, the recipe's
data and evaluation, and — when ``RUN/checkpoints/latest`` exists and ``checkpoint.resume`` is on — the state of
the last complete checkpoint: weights, optimizer, schedule, step, the recipe's data position, the step guard's
history and every rank's random generators. The same command therefore restarts a killed run where its last
checkpoint left it, and the run goes on exactly as if it had never stopped.

A :class:`Recipe` says what is task-specific: the model, the data (:meth:`Recipe.micro_batch`), the losses of one
micro-batch (:meth:`Recipe.losses`), the evaluation, and the state of its data for exact resume.

One optimizer step is ``gradient_accumulation_steps`` micro-steps; each reads one micro-batch, computes the
recipe's losses and backpropagates their total. At the boundary :class:`~itnet_scale.train.step_guard.StepGuard`
decides for all ranks whether the update is applied (a non-finite loss or gradient, or a loss spike, skips it;
DeepSpeed's ZeRO 1–3 overflow check can also skip it), the scalars are logged, the recipe evaluates every
``eval.every`` steps, and every ``checkpoint.save_every`` steps a checkpoint is saved — never right after a
skipped step (the save waits for the next applied one).
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from itnet_scale.checkpoint.deepspeed_checkpoint import load_checkpoint, save_checkpoint, step_tag
from itnet_scale.checkpoint.library import label_count, task_of
from itnet_scale.config import to_yaml
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.flops import TrainingFlops
from itnet_scale.models.summary import count_parameters
from itnet_scale.nn.backbone import configure_activation_checkpointing
from itnet_scale.parallel import SequenceParallel, apply_sequence_parallel, init_distributed
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.engine import build_engine
from itnet_scale.train.evaluation import format_metrics, metrics_table
from itnet_scale.train.metrics_logger import MetricsLogger, Throughput
from itnet_scale.train.optimizer import OptimizerSettings
from itnet_scale.train.param_groups import base_learning_rate
from itnet_scale.train.pretrain_data import agree_on_startup_error
from itnet_scale.train.rng import capture_rng_state, restore_rng_state
from itnet_scale.train.step_guard import StepGuard, guarded_step

logger = logging.getLogger(__name__)


class TrainerConfig(Protocol):
    """What the core reads of a recipe's config (:class:`~itnet_scale.train.config.PretrainConfig` and the
    fine-tuning config have these sections)."""

    run_dir: str
    steps: int
    seed: int
    sequence_parallel_size: int
    optimizer: OptimizerSettings
    deepspeed: DeepSpeedSettings
    checkpoint: Any  # CheckpointSettings
    logging: Any  # LoggingSettings
    guard: Any  # GuardSettings
    eval: Any  # every, at_start, at_end
    activation_checkpointing: Any

    @property
    def checkpoint_dir(self) -> Path: ...

    @property
    def tensorboard_dir(self) -> Path: ...

    @property
    def eval_file(self) -> Path: ...


@dataclass
class Part:
    """One batch of a micro-step with its weight in the total (0: a stand-in that keeps every rank's forwards in
    step, see :mod:`~itnet_scale.train.pretrain_data`), and what it counts for throughput."""

    batch: dict[str, Tensor]
    weight: float
    samples: int
    tokens: int


@dataclass
class StepRecord:
    """What one optimizer step did (every rank holds the same numbers)."""

    step: int
    losses: dict[str, float]
    applied: bool
    skip_reason: str | None
    lr: float
    grad_norm: float | None


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` returns: the steps it ran, where it started, the last checkpoint, and the
    evaluations (``{"step": …, <metric>: …}``)."""

    start_step: int
    records: list[StepRecord] = field(default_factory=list)
    checkpoint: Path | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)


class Recipe(abc.ABC):
    """The task-specific half of a run (see the module doc). The trainer calls, in order: :meth:`build_model`,
    :meth:`setup` (once the engine exists), then per micro-step :meth:`micro_batch` and :meth:`losses`, and
    :meth:`evaluate` / :meth:`state_dict` / :meth:`load_state_dict` as the run asks."""

    #: The losses the recipe reports, in the order they are logged (``total`` is added by the trainer).
    loss_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def build_model(self) -> tuple[nn.Module, ModelConfig]:
        """The model to train (built under the run's seed, initial weights loaded) and its config."""

    @abc.abstractmethod
    def setup(self, trainer: Trainer) -> str | None:
        """Build the data and evaluation (the trainer's engine and process groups exist); returns a problem
        found (a message every rank must agree on) or None."""

    @abc.abstractmethod
    def micro_batch(self) -> tuple[list[Part], float]:
        """The next micro-step's batches and the seconds waited for them."""

    @abc.abstractmethod
    def losses(self, engine: Any, parts: Sequence[Part]) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar to backpropagate and each loss (detached) of one micro-step's ``parts``."""

    def schedule(self, config: TrainerConfig) -> tuple[int, OptimizerSettings]:
        """The run's optimizer steps and optimizer settings (the LR schedule spans the steps): the config's by
        default; an epoch-based recipe derives them from its data."""
        return config.steps, config.optimizer

    def has_evaluation(self) -> bool:
        return False

    def should_evaluate(self, step: int, config: TrainerConfig) -> bool:
        """Evaluate after optimizer step ``step``: every ``eval.every`` steps by default."""
        return bool(config.eval.every) and step % config.eval.every == 0

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Evaluate ``model`` (the engine's module) without touching the training state; the metrics by name
        (none for a recipe whose :meth:`has_evaluation` is False: the trainer never asks it)."""
        return {}

    def after_step(self, trainer: Trainer, record: StepRecord, metrics: MetricsLogger) -> None:  # noqa: B027
        """Called after each optimizer step (the atlas, an EMA update); nothing by default."""

    def after_evaluation(self, trainer: Trainer, values: dict[str, float]) -> None:  # noqa: B027
        """Called after each evaluation (best checkpoint, early stopping); nothing by default."""

    def should_stop(self) -> bool:
        """Stop before ``steps`` (early stopping)."""
        return False

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The recipe's state for exact resume (its data position)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def client_state(self) -> dict[str, Any]:
        """Extra fields for the checkpoint's client state (read by the converter and inspection tools)."""
        return {}

    def save_files(self, tag_dir: Path) -> None:  # noqa: B027
        """Write the recipe's own files into a checkpoint's tag folder, before DeepSpeed saves it (so ``latest``
        only ever names a checkpoint whose files are complete); every rank calls it. Nothing by default."""

    def load_files(self, tag_dir: Path) -> None:  # noqa: B027
        """Read back what :meth:`save_files` wrote, on resume; every rank calls it. Nothing by default."""

    def finish(self, trainer: Trainer, result: TrainResult) -> None:  # noqa: B027
        """Called once the run is done (on every rank); nothing by default."""


def all_reduce_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` over every rank (itself without a process group)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


class Trainer:
    """A training run on DeepSpeed of ``recipe`` under ``config`` (see the module doc). ``deepspeed_config_file``:
    the user's own DeepSpeed JSON, merged over the generated one."""

    def __init__(self, config: TrainerConfig, recipe: Recipe,
                 deepspeed_config_file: str | Path | None = None) -> None:
        self.config, self.recipe = config, recipe
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.sp = SequenceParallel.setup(config.sequence_parallel_size)

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model, self.model_config = recipe.build_model()
        apply_sequence_parallel(model, self.sp)
        configure_activation_checkpointing(model, config.activation_checkpointing.every)
        self.flops = TrainingFlops(model)  # before ZeRO-3 partitions the parameters (their numel becomes 0)
        if self.rank == 0:
            logger.info("model: %s (%s)", type(model).__name__, count_parameters(model))
        self.total_steps, optimizer = recipe.schedule(config)
        self.engine, self.optimizer = build_engine(
            model, config.deepspeed, optimizer, self.total_steps, model_width=self.model_config.dim,
            deepspeed_config_file=deepspeed_config_file, sequence_parallel=self.sp)
        self.accumulation = int(self.engine.gradient_accumulation_steps())
        agree_on_startup_error(recipe.setup(self))
        self.guard = StepGuard(config.guard.spike_factor, config.guard.spike_window, config.guard.spike_warmup)
        self.step = 0
        self.resumed_from: str | None = None
        if config.checkpoint.resume:
            self._resume()
        if self.rank == 0:
            Path(config.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(config.run_dir) / "config.yaml").write_text(to_yaml(config), encoding="utf-8")

    # -- checkpoints -----------------------------------------------------------------------------------------

    def _client_state(self) -> dict[str, Any]:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # ds_to_universal requires the client's declaration of the universal-checkpoint format it writes for; no
        # tensor parallelism here, so the version alone (no parameter patterns) describes it.
        universal = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
        return {UNIVERSAL_CHECKPOINT_INFO: universal, "step": self.step, "data": self.recipe.state_dict(),
                "guard": self.guard.state_dict(),
                "config": to_yaml(self.config), "model_config": to_yaml(self.model_config),
                "task": task_of(self.engine.module), "labels": label_count(self.engine.module),
                "world_size": self.world_size, "sequence_parallel_size": self.sp.size, **self.recipe.client_state()}

    def _resume(self) -> None:
        loaded = load_checkpoint(self.engine, self.config.checkpoint_dir)
        if loaded is None:
            return
        tag, client_state, rank_state = loaded
        saved_model = client_state.get("model_config")
        if saved_model is not None and saved_model != to_yaml(self.model_config):
            raise ValueError(f"{self.config.checkpoint_dir / tag} was trained with another model config; resume "
                             f"with the same model and model_overrides (saved:\n{saved_model})")
        self.step = int(client_state["step"])
        self.recipe.load_state_dict(client_state["data"])
        self.recipe.load_files(self.config.checkpoint_dir / tag)
        self.guard.load_state_dict(client_state["guard"])
        if rank_state is not None and client_state.get("world_size") == self.world_size:
            restore_rng_state(rank_state["rng"])
        self.resumed_from = tag
        if self.rank == 0:
            print(f"resumed from {self.config.checkpoint_dir / tag} at step {self.step}", flush=True)

    def save(self) -> Path:
        """Save a checkpoint of the current step (every rank); returns its folder."""
        self.recipe.save_files(self.config.checkpoint_dir / step_tag(self.step))
        tag = save_checkpoint(self.engine, self.config.checkpoint_dir, self.step, self._client_state(),
                              {"rng": capture_rng_state()}, keep_last=self.config.checkpoint.keep_last)
        return self.config.checkpoint_dir / tag

    # -- the loop --------------------------------------------------------------------------------------------

    def _grad_norm(self) -> float | None:
        """The global gradient norm before clipping: DeepSpeed's for ZeRO 1–3 (after the step), the full
        gradients' at ZeRO 0 (replicated, so every rank computes the same)."""
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            return float(norm)
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads \
            else None

    def train_step(self) -> tuple[StepRecord, dict[str, float]]:
        """One optimizer step (``gradient_accumulation_steps`` micro-steps); returns its record and the counts for
        throughput (samples, tokens, FLOPs of this rank, seconds waited for data)."""
        totals: list[Tensor] = []
        sums, seen = Counter(), Counter()
        counts = {"samples": 0.0, "tokens": 0.0, "flops": 0.0, "data_wait": 0.0}
        grads_at_zero0: list[Tensor] = []
        for micro in range(self.accumulation):
            parts, waited = self.recipe.micro_batch()
            counts["data_wait"] += waited
            total, losses = self.recipe.losses(self.engine, parts)
            self.engine.backward(total * self.sp.loss_scale)
            totals.append(total.detach())
            for name, value in losses.items():
                sums[name] += float(value)
                seen[name] += 1
            for part in parts:
                if part.weight > 0:
                    counts["samples"] += part.samples
                    counts["tokens"] += part.tokens
                    counts["flops"] += self.flops(part.tokens, max(1, part.tokens // max(part.samples, 1)))
            if micro < self.accumulation - 1:
                self.engine.step()  # DeepSpeed counts micro-steps; the update happens at the boundary
        if self.engine.zero_optimization_stage() == 0:
            grads_at_zero0 = [p.grad for p in self.engine.module.parameters()]
        grad_norm = self._grad_norm() if grads_at_zero0 else None
        reason = self.guard.decide(torch.stack(totals), grads_at_zero0)
        lr = base_learning_rate(self.engine.optimizer)  # the rate at scale 1 (layer-wise decay scales groups)
        applied = guarded_step(self.engine, self.optimizer, reason)
        if reason is None and not applied:
            reason = "nonfinite_grad"  # DeepSpeed's own overflow check (ZeRO 1–3) found a non-finite gradient
            self.guard.skipped[reason] += 1
            logger.warning("DeepSpeed skipped the optimizer step (non-finite gradient norm)")
        if grad_norm is None:
            grad_norm = self._grad_norm()
        self.step += 1
        names = [*self.recipe.loss_names, "total"]
        sums["total"], seen["total"] = float(torch.stack(totals).sum()), len(totals)
        both = all_reduce_mean(torch.tensor([sums[n] for n in names] + [seen[n] for n in names], dtype=torch.float64))
        losses = {n: float(both[i] / both[len(names) + i]) for i, n in enumerate(names) if both[len(names) + i] > 0}
        record = StepRecord(self.step, losses, applied, reason, lr,
                            None if grad_norm is None or not math.isfinite(grad_norm) else grad_norm)
        return record, counts

    def run(self) -> TrainResult:
        """Train from the current step to :attr:`total_steps` (or until the recipe stops early); save at the end.
        Returns what happened."""
        config, recipe = self.config, self.recipe
        result = TrainResult(start_step=self.step)
        metrics = MetricsLogger(config.tensorboard_dir, rank=self.rank, total_steps=self.total_steps,
                                start_step=self.step, print_every=config.logging.print_every,
                                eval_file=config.eval_file)
        throughput = Throughput(config.logging.peak_flops_per_rank * self.world_size)
        pending_save = False
        last_saved = self.step if self.resumed_from else None
        try:
            if config.eval.at_start and recipe.has_evaluation() and self.step == 0:
                result.evaluations.append(self.evaluate(metrics))
            while self.step < self.total_steps and not recipe.should_stop():
                began = time.perf_counter()
                record, counts = self.train_step()
                result.records.append(record)
                totals = all_reduce_mean(torch.tensor([counts[k] for k in ("samples", "tokens", "flops")],
                                                      dtype=torch.float64)) * self.world_size / self.sp.size
                throughput.add(int(totals[0]), int(totals[1]), counts["data_wait"], float(totals[2]))
                if self.step % config.logging.log_every == 0 or self.step == self.total_steps:
                    metrics.log(self.step, self._scalars(record, throughput, time.perf_counter() - began))
                recipe.after_step(self, record, metrics)
                if recipe.has_evaluation() and recipe.should_evaluate(self.step, config):
                    result.evaluations.append(self.evaluate(metrics))
                pending_save = pending_save or self.step % config.checkpoint.save_every == 0
                if pending_save and record.applied:
                    result.checkpoint, last_saved, pending_save = self.save(), self.step, False
            evaluated = [e["step"] for e in result.evaluations]
            if config.eval.at_end and recipe.has_evaluation() and self.step not in evaluated:
                result.evaluations.append(self.evaluate(metrics))
            if last_saved != self.step:
                result.checkpoint = self.save()
            elif result.checkpoint is None and last_saved is not None:
                result.checkpoint = config.checkpoint_dir / self.resumed_from
        finally:
            metrics.close()
        if self.rank == 0:
            print(f"finished step {self.step}: checkpoint {result.checkpoint}; "
                  f"TensorBoard logs: tensorboard --logdir {config.tensorboard_dir}", flush=True)
            if len(result.records) >= 2:
                print(f"loss, mean of the first → last {min(10, len(result.records) // 2)} steps run: "
                      f"{loss_change(result.records, recipe.loss_names)}", flush=True)
            if result.evaluations:
                shown = result.evaluations[:1] + result.evaluations[1:][-1:]
                print(f"held-out evaluation ({config.eval_file}):\n{metrics_table(shown)}", flush=True)
        recipe.finish(self, result)
        return result

    def evaluate(self, metrics: MetricsLogger | None = None) -> dict[str, float]:
        """The recipe's evaluation now, reported through ``metrics``; returns ``{"step": …, <metric>: …}``."""
        values = self.recipe.evaluate(self.engine.module, self.step)
        if metrics is not None:
            metrics.log_evaluation(self.step, values, format_metrics(self.step, values))
        self.recipe.after_evaluation(self, values)
        return {"step": self.step, **values}

    def _scalars(self, record: StepRecord, throughput: Throughput, step_seconds: float) -> dict[str, float]:
        scalars = {f"loss/{name}": value for name, value in record.losses.items()}
        scalars["lr"] = record.lr
        if record.grad_norm is not None:
            scalars["grad_norm"] = record.grad_norm
        scalars["skipped_steps"] = float(sum(self.guard.skipped.values()))
        for reason, count in self.guard.skipped.items():
            scalars[f"skipped/{reason}"] = float(count)
        scalars.update(throughput.rates())
        scalars["time/step_s"] = step_seconds
        scalars.update(_memory_scalars())
        return scalars


def loss_change(records: list[StepRecord], names: Sequence[str]) -> str:
    """``total 18.3 → 9.1, mlm 7.7 → 4.0, …``: each loss's mean over the first and the last few applied steps."""
    count = min(10, len(records) // 2)
    first, last = records[:count], records[-count:]
    parts = []
    for name in ("total", *names):
        before = [r.losses[name] for r in first if r.applied and name in r.losses]
        after = [r.losses[name] for r in last if r.applied and name in r.losses]
        if before and after:
            parts.append(f"{name} {sum(before) / len(before):.4g} → {sum(after) / len(after):.4g}")
    return ", ".join(parts)


def _memory_scalars() -> dict[str, float]:
    """This process's resident memory and, on CUDA, the peak allocated accelerator memory (GiB)."""
    import psutil

    scalars = {"memory/rss_gib": psutil.Process().memory_info().rss / 2**30}
    if torch.cuda.is_available():
        scalars["memory/accelerator_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return scalars


__all__ = ["Part", "Recipe", "StepRecord", "TrainResult", "Trainer", "TrainerConfig", "all_reduce_mean",
           "loss_change"]
