"""The pretraining loop: build everything from a :class:`~itnet_scale.train.config.PretrainConfig`, resume, train.

:class:`Pretrainer` sets up, in this order: the process group (DeepSpeed's; gloo on CPU), the sequence-parallel
groups, the tokenizer and the model (same seed on every rank), optionally the weights of a library-format model
(``init_from``), the optimizer and schedule, the DeepSpeed engine, the per-stream data
(:mod:`~itnet_scale.train.pretrain_data`), and — when ``RUN/checkpoints/latest`` exists and ``checkpoint.resume`` is
on — the state of the last complete checkpoint: weights, optimizer, schedule, step, each stream's position, the
step guard's history and every rank's random generators. The same command therefore restarts a killed run where
its last checkpoint left it, and the run goes on exactly as if it had never stopped.

With held-out shard sets in the data config, :class:`~itnet_scale.train.evaluation.Evaluator` evaluates the model
on them (``eval``: every N steps, at the start, at the end) without touching the training state.

One optimizer step is ``gradient_accumulation_steps`` micro-steps; each reads one micro-batch per stream, runs
every objective (:func:`~itnet_scale.train.objectives.micro_step_losses`) and backpropagates the weighted total.
At the boundary :class:`~itnet_scale.train.step_guard.StepGuard` decides for all ranks whether the update is
applied (a non-finite loss or gradient, or a loss spike, skips it; DeepSpeed's ZeRO 1–3 overflow check can also
skip it), the scalars are logged, and every ``checkpoint.save_every`` steps a checkpoint is saved — never right
after a skipped step (the save waits for the next applied one).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from itnet_scale.atlas import atlas, require_matplotlib
from itnet_scale.checkpoint.deepspeed_checkpoint import load_checkpoint, save_checkpoint
from itnet_scale.checkpoint.library import load_pretrained_weights
from itnet_scale.config import to_yaml
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.flops import TrainingFlops
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.models.summary import count_parameters
from itnet_scale.nn.backbone import configure_activation_checkpointing
from itnet_scale.parallel import SequenceParallel, apply_sequence_parallel, init_distributed
from itnet_scale.train.config import OBJECTIVES, PretrainConfig
from itnet_scale.train.engine import build_engine
from itnet_scale.train.evaluation import Evaluator, format_metrics, metrics_table
from itnet_scale.train.metrics_logger import MetricsLogger, Throughput
from itnet_scale.train.objectives import gather_rows, micro_step_losses
from itnet_scale.train.pretrain_data import MicroBatchBuilder, PretrainStreams, agree_on_startup_error
from itnet_scale.train.rng import capture_rng_state, preserved_rng_state, restore_rng_state
from itnet_scale.train.step_guard import StepGuard, guarded_step

logger = logging.getLogger(__name__)


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
class PretrainResult:
    """What :meth:`Pretrainer.run` returns: the steps it ran, where it started, the last checkpoint, and the
    held-out evaluations (``{"step": …, <metric>: …}``)."""

    start_step: int
    records: list[StepRecord] = field(default_factory=list)
    checkpoint: Path | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)


def _all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


class Pretrainer:
    """A pretraining run on DeepSpeed (see the module doc). ``deepspeed_config_file``: the user's own DeepSpeed
    JSON, merged over the generated one. ``allow_pipe_urls``: the command line's consent to ``pipe:`` stream paths
    (a config cannot give it)."""

    def __init__(self, config: PretrainConfig, deepspeed_config_file: str | Path | None = None, *,
                 allow_pipe_urls: bool = False) -> None:
        self.config = config
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.sp = SequenceParallel.setup(config.sequence_parallel_size)
        self.tokenizer = Tokenizer.from_dir(config.tokenizer)
        self.model_config = config.model_config(vocab_size=self.tokenizer.vocab_size)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model_overrides.vocab_size={self.model_config.vocab_size} is smaller than the "
                             f"tokenizer's {self.tokenizer.vocab_size} ids ({config.tokenizer})")
        data = config.data_config()

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = ITNetForPretraining(self.model_config)
        if config.init_from is not None:
            self._load_initial_weights(model, config.init_from)
        apply_sequence_parallel(model, self.sp)
        configure_activation_checkpointing(model, config.activation_checkpointing.every)
        self.flops = TrainingFlops(model)  # before ZeRO-3 partitions the parameters (their numel becomes 0)
        if self.rank == 0:
            logger.info("model: %s (%s)", type(model).__name__, count_parameters(model))
        self.engine, self.optimizer = build_engine(
            model, config.deepspeed, config.optimizer, config.steps, model_width=self.model_config.dim,
            deepspeed_config_file=deepspeed_config_file, sequence_parallel=self.sp)
        self.accumulation = int(self.engine.gradient_accumulation_steps())

        def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
            return MicroBatchBuilder(stream, kind, index, config.tokenizer, config.objectives, self.model_config,
                                     data.seed)

        self.streams = PretrainStreams(
            data, config.deepspeed.micro_batch_size // data.unit_size, builder, num_workers=config.num_workers,
            data_parallel_rank=self.sp.data_parallel_rank, data_parallel_size=self.sp.data_parallel_size,
            allow_pipe_urls=allow_pipe_urls)
        problem = None
        try:  # a held-out set that cannot be read stops every rank alike, reported once
            self.evaluator = Evaluator(data, config.eval, self.tokenizer, builder,
                                       prompt_tokens=config.objectives.max_caption_tokens,
                                       rank=self.sp.data_parallel_rank, world_size=self.sp.data_parallel_size,
                                       group=self.sp.data_parallel_group, allow_pipe_urls=allow_pipe_urls)
        except (OSError, ValueError) as error:
            problem = str(error)
        if config.logging.atlas_every and problem is None:
            try:
                require_matplotlib()
            except ImportError as error:
                problem = f"logging.atlas_every: {error}"
        agree_on_startup_error(problem)
        self.guard = StepGuard(config.guard.spike_factor, config.guard.spike_window, config.guard.spike_warmup)
        self.step = 0
        self.resumed_from: str | None = None
        if config.checkpoint.resume:
            self._resume()
        if self.rank == 0:
            Path(config.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(config.run_dir) / "config.yaml").write_text(to_yaml(config), encoding="utf-8")

    # -- set-up ----------------------------------------------------------------------------------------------

    def _load_initial_weights(self, model: ITNetForPretraining, directory: str) -> None:
        load_pretrained_weights(model, directory)
        logger.info("initial weights from %s", directory)

    def _client_state(self) -> dict[str, Any]:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # ds_to_universal requires the client's declaration of the universal-checkpoint format it writes for; no
        # tensor parallelism here, so the version alone (no parameter patterns) describes it.
        universal = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
        return {UNIVERSAL_CHECKPOINT_INFO: universal, "step": self.step, "data": self.streams.state_dict(),
                "guard": self.guard.state_dict(),
                "config": to_yaml(self.config), "model_config": to_yaml(self.model_config),
                "objectives": self.streams.objectives, "world_size": self.world_size,
                "sequence_parallel_size": self.sp.size}

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
        self.streams.load_state_dict(client_state["data"])
        self.guard.load_state_dict(client_state["guard"])
        if rank_state is not None and client_state.get("world_size") == self.world_size:
            restore_rng_state(rank_state["rng"])
        self.resumed_from = tag
        if self.rank == 0:
            print(f"resumed from {self.config.checkpoint_dir / tag} at step {self.step}", flush=True)

    # -- the loop --------------------------------------------------------------------------------------------

    def _save(self) -> Path:
        tag = save_checkpoint(self.engine, self.config.checkpoint_dir, self.step, self._client_state(),
                              {"rng": capture_rng_state()}, keep_last=self.config.checkpoint.keep_last)
        return self.config.checkpoint_dir / tag

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
        gather = None
        if self.config.objectives.gather_contrastive:
            def gather(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
                return gather_rows(rows, self.sp.data_parallel_group)
        totals: list[torch.Tensor] = []
        sums, seen = Counter(), Counter()
        counts = {"samples": 0.0, "tokens": 0.0, "flops": 0.0, "data_wait": 0.0}
        grads_at_zero0: list[torch.Tensor] = []
        for micro in range(self.accumulation):
            parts, waited = self.streams.next()
            counts["data_wait"] += waited
            total, losses = micro_step_losses(self.engine, parts, self.config.objectives, gather)
            self.engine.backward(total * self.sp.loss_scale)
            totals.append(total.detach())
            for name, value in losses.items():
                sums[name] += float(value)
                seen[name] += 1
            for part, weight in parts:
                if weight > 0:
                    counts["samples"] += part.samples
                    counts["tokens"] += part.tokens
                    counts["flops"] += self.flops(part.tokens, max(1, part.tokens // max(part.samples, 1)))
            if micro < self.accumulation - 1:
                self.engine.step()  # DeepSpeed counts micro-steps; the update happens at the boundary
        if self.engine.zero_optimization_stage() == 0:
            grads_at_zero0 = [p.grad for p in self.engine.module.parameters()]
        grad_norm = self._grad_norm() if grads_at_zero0 else None
        reason = self.guard.decide(torch.stack(totals), grads_at_zero0)
        lr = float(self.engine.get_lr()[0])
        applied = guarded_step(self.engine, self.optimizer, reason)
        if reason is None and not applied:
            reason = "nonfinite_grad"  # DeepSpeed's own overflow check (ZeRO 1–3) found a non-finite gradient
            self.guard.skipped[reason] += 1
            logger.warning("DeepSpeed skipped the optimizer step (non-finite gradient norm)")
        if grad_norm is None:
            grad_norm = self._grad_norm()
        self.step += 1
        names = [*OBJECTIVES, "total"]
        sums["total"], seen["total"] = float(torch.stack(totals).sum()), len(totals)
        both = _all_reduce_mean(torch.tensor([sums[n] for n in names] + [seen[n] for n in names], dtype=torch.float64))
        losses = {n: float(both[i] / both[len(names) + i]) for i, n in enumerate(names) if both[len(names) + i] > 0}
        record = StepRecord(self.step, losses, applied, reason, lr,
                            None if grad_norm is None or not math.isfinite(grad_norm) else grad_norm)
        return record, counts

    def run(self) -> PretrainResult:
        """Train from the current step to ``config.steps``; save at the end. Returns what happened."""
        config = self.config
        result = PretrainResult(start_step=self.step)
        metrics = MetricsLogger(config.tensorboard_dir, rank=self.rank, total_steps=config.steps, start_step=self.step,
                                print_every=config.logging.print_every, eval_file=config.eval_file)
        throughput = Throughput(config.logging.peak_flops_per_rank * self.world_size)
        pending_save = False
        last_saved = self.step if self.resumed_from else None
        try:
            if config.eval.at_start and self.evaluator and self.step == 0:
                result.evaluations.append(self.evaluate(metrics))
            while self.step < config.steps:
                began = time.perf_counter()
                record, counts = self.train_step()
                result.records.append(record)
                totals = _all_reduce_mean(torch.tensor([counts[k] for k in ("samples", "tokens", "flops")],
                                                       dtype=torch.float64)) * self.world_size / self.sp.size
                throughput.add(int(totals[0]), int(totals[1]), counts["data_wait"], float(totals[2]))
                if self.step % config.logging.log_every == 0 or self.step == config.steps:
                    metrics.log(self.step, self._scalars(record, throughput, time.perf_counter() - began))
                if config.eval.every and self.step % config.eval.every == 0:
                    result.evaluations.append(self.evaluate(metrics))
                if config.logging.atlas_every and self.step % config.logging.atlas_every == 0:
                    self.log_atlas(metrics)
                pending_save = pending_save or self.step % config.checkpoint.save_every == 0
                if pending_save and record.applied:
                    result.checkpoint, last_saved, pending_save = self._save(), self.step, False
            evaluated = [e["step"] for e in result.evaluations]
            if config.eval.at_end and self.evaluator and self.step not in evaluated:
                result.evaluations.append(self.evaluate(metrics))
            if last_saved != self.step:
                result.checkpoint = self._save()
            elif result.checkpoint is None and last_saved is not None:
                result.checkpoint = config.checkpoint_dir / self.resumed_from
        finally:
            metrics.close()
        if self.rank == 0:
            print(f"finished step {self.step}: checkpoint {result.checkpoint}; "
                  f"TensorBoard logs: tensorboard --logdir {config.tensorboard_dir}", flush=True)
            if len(result.records) >= 2:
                print(f"loss, mean of the first → last {min(10, len(result.records) // 2)} steps run: "
                      f"{_loss_change(result.records)}", flush=True)
            if result.evaluations:
                shown = result.evaluations[:1] + result.evaluations[1:][-1:]
                print(f"held-out evaluation ({config.eval_file}):\n{metrics_table(shown)}", flush=True)
        return result

    def evaluate(self, metrics: MetricsLogger | None = None) -> dict[str, float]:
        """The held-out evaluation now (:mod:`~itnet_scale.train.evaluation`), reported through ``metrics``;
        returns ``{"step": …, <metric>: …}``."""
        values = self.evaluator.evaluate(self.engine.module)
        if metrics is not None:
            metrics.log_evaluation(self.step, values, format_metrics(self.step, values))
        return {"step": self.step, **values}

    def log_atlas(self, metrics: MetricsLogger) -> None:
        """The kernel atlas (:mod:`itnet_scale.atlas`) of each held-out set's first batch, to TensorBoard. Every
        rank runs the same forwards (ZeRO-3 gathers parameters inside them); rank 0 writes. The random generators
        are left as they were, so the run trains as one without it."""
        model = self.engine.module
        dtype = next(model.parameters()).dtype
        with preserved_rng_state():
            for stream, batch in self.evaluator.inspection_batches(self.config.logging.atlas_samples, dtype).items():
                metrics.log_atlas(self.step, stream, atlas(model, batch))

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


def _loss_change(records: list[StepRecord]) -> str:
    """``total 18.3 → 9.1, mlm 7.7 → 4.0, …``: each loss's mean over the first and the last few applied steps."""
    count = min(10, len(records) // 2)
    first, last = records[:count], records[-count:]
    parts = []
    for name in ("total", *OBJECTIVES):
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


def run_pretraining(config: PretrainConfig, deepspeed_config_file: str | Path | None = None, *,
                    allow_pipe_urls: bool = False) -> PretrainResult:
    """Build a :class:`Pretrainer` from ``config`` and run it to ``config.steps``."""
    return Pretrainer(config, deepspeed_config_file, allow_pipe_urls=allow_pipe_urls).run()
