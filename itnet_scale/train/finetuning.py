"""The fine-tuning recipe: one benchmark's training split, its validation split(s) each epoch with the official
metrics, the best model by the task's metric, early stopping; or, with ``eval_only``, one split's metrics and
submission file.

:class:`FinetuningRecipe` is what fine-tuning adds to the trainer core (:mod:`itnet_scale.train.loop`), which keeps
the engine, the step guard, checkpoints with exact (mid-epoch) resume, the random generators and the logging:

- **Model.** The benchmark's task model (``classification``, or ``regression`` for STS-B) with only the encoder its
  modality uses, two text segments for sentence pairs, started from ``init_from`` — a library-format folder, or a
  DeepSpeed checkpoint folder that rank 0 converts to ``RUN/init`` first (:mod:`itnet_scale.checkpoint.conversion`)
  — or from scratch. A grayscale-pretrained stem is adapted to 3 channels on load (logged). With
  ``linear_probe`` only the head trains.
- **Data.** The training split read from ``data_root`` or, with ``train_shards.path``, streamed from a shard set
  (:class:`~itnet_scale.train.finetune_config.TrainShardSettings`; the stream and its exact resume are
  pretraining's, :class:`~itnet_scale.train.pretrain_data.PretrainStreams`, with
  :class:`~itnet_scale.train.finetune_data.ShardBatchBuilder` making the batches).
- **Schedule.** Epochs over the training split (:class:`~itnet_scale.train.finetune_data.EpochPlan`): the run's
  optimizer steps are ``epochs × steps_per_epoch``, the warm-up ``warmup_epochs × steps_per_epoch``; layer-wise
  learning-rate decay and the head's multiplier are the optimizer section's (``optimizer.layer_decay``,
  ``optimizer.head_lr_multiplier``).
- **Loss.** Soft-target cross-entropy (label smoothing; mixup / cutmix for images) or, for regression, the mean
  squared error.
- **Evaluation.** After every ``eval.every_epochs`` epochs each validation split is evaluated exactly once over the
  ranks (:class:`~itnet_scale.data.eval_partition.EvalPartition`), with the EMA weights when ``ema.decay`` > 0,
  metrics named ``<split>/<metric>``; ModelNet40 adds test-time voting (``eval.votes``). The best evaluation by
  the first split's primary metric is saved as a library-format model in ``RUN/best`` (with the benchmark, its
  label names and metrics in the folder's provenance), and ``early_stopping.patience`` evaluations without
  improvement end the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from itnet_scale.checkpoint.atomic_writes import write_bytes_atomically
from itnet_scale.checkpoint.conversion import convert_to_library
from itnet_scale.checkpoint.library import (
    build_model,
    is_library_folder,
    load_pretrained_weights,
    read_library_config,
    save_pretrained,
)
from itnet_scale.data.augment import soft_target_cross_entropy
from itnet_scale.data.eval_partition import EvalPartition
from itnet_scale.data.shards import read_index
from itnet_scale.data.stream import DataConfig, StreamConfig
from itnet_scale.data.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG
from itnet_scale.data.tokenizer import MODEL_FILE as TOKENIZER_MODEL
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import load_model_config
from itnet_scale.nn.encoders import ENCODERS_OF_MODALITY
from itnet_scale.nn.heads import VQAHead
from itnet_scale.tasks import Split
from itnet_scale.tasks.modelnet40 import vote
from itnet_scale.train.early_stopping import EarlyStopping
from itnet_scale.train.ema import WeightEMA
from itnet_scale.train.finetune_config import FinetuneConfig
from itnet_scale.train.finetune_data import (
    SHARD_KIND_OF,
    TEXT_MODALITIES,
    EpochPlan,
    ExampleBatcher,
    ShardBatchBuilder,
    TrainingBatches,
    training_loader,
)
from itnet_scale.train.loop import Part, Recipe, StepRecord, Trainer, TrainResult
from itnet_scale.train.metrics_logger import MetricsLogger
from itnet_scale.train.optimizer import OptimizerSettings
from itnet_scale.train.pretrain_data import PretrainStreams

logger = logging.getLogger(__name__)

#: The encoders each benchmark modality uses (a sentence pair is text with two segments).
ENCODERS_OF = {**ENCODERS_OF_MODALITY, "text_pair": ("text",)}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class FinetuningRecipe(Recipe):
    """Fine-tuning (see the module doc)."""

    loss_names = ("task",)

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config
        self.root = Path(config.data_root)
        self.benchmark = config.benchmark.for_root(self.root)
        self.train_split: Split | None = None
        self.train_examples = 0  # in the split, or in the streamed shard set's index
        if not config.eval_only and config.train_shards.path:
            self.train_examples = self._check_train_shards()
        elif not config.eval_only:
            self.train_split = self.benchmark.read(self.root, self.benchmark.train_split)
            if not self.train_split.labelled:
                raise ValueError(f"{self.benchmark.name}'s {self.benchmark.train_split!r} split has no labels")
            self.train_examples = len(self.train_split.examples)
        names = (config.split,) if config.split else (self.benchmark.eval_splits or self.benchmark.test_splits)
        self.eval_splits = {name: self.benchmark.read(self.root, name) for name in names}
        self.primary = f"{names[0]}/{self.benchmark.primary_metric}"
        modality = self.benchmark.modality  # the data first: a missing file is named before anything else loads
        self.tokenizer = Tokenizer.from_dir(config.tokenizer) if modality in TEXT_MODALITIES else None
        self.batcher = ExampleBatcher(self.benchmark, config.augment, seed=config.seed,
                                      max_text_tokens=config.max_text_tokens, tokenizer=self.tokenizer,
                                      classes=self.benchmark.num_outputs, regression=self.benchmark.regression)
        self.early_stopping = EarlyStopping(config.early_stopping)
        self.ema: WeightEMA | None = None
        self.plan: EpochPlan | None = None
        self.micro_batches = 0
        self.loader = None
        self.streams: PretrainStreams | None = None
        self.rank, self.ranks = 0, 1
        self.model_config: ModelConfig | None = None
        self.predictions: dict[str, np.ndarray] = {}

    def _check_train_shards(self) -> int:
        """The streamed training set's sample count, after checking that its index describes this benchmark's
        training data: the modality's shard kind and, where it records them, the same classes in the same order."""
        path = self.config.train_shards.path
        try:
            index = read_index(path, check_shards=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"train_shards.path: {error}") from None
        kind = SHARD_KIND_OF[self.benchmark.modality]
        if index["kind"] != kind:
            raise ValueError(f"train_shards.path: {path} holds a {index['kind']!r} shard set; {self.benchmark.name} "
                             f"trains on {kind!r} sets (tools/make_shards.py writes them)")
        classes = index.get("classes")
        names = self.benchmark.label_names
        if classes is not None and (names is None or list(classes) != list(names)):
            raise ValueError(f"train_shards.path: {path} was written with classes {list(classes)[:5]}… "
                             f"({len(classes)}), but {self.benchmark.name} at {self.root} has "
                             f"{'none (regression)' if names is None else f'{list(names)[:5]}… ({len(names)})'}")
        return int(index["samples"])

    # -- model -----------------------------------------------------------------------------------------------

    def _initial_folder(self) -> Path | None:
        """``init_from`` as a library folder: itself, or a DeepSpeed checkpoint converted by rank 0 into
        ``RUN/init`` (reused when it is there already: a resumed run converts nothing)."""
        source = self.config.init_from
        if source is None:
            return None
        if is_library_folder(source):
            return Path(source)
        converted = Path(self.config.run_dir) / "init"
        if _rank() == 0 and not is_library_folder(converted):
            logger.info("converting the DeepSpeed checkpoint %s into %s", source, converted)
            convert_to_library(source, converted, overwrite=True)
        _barrier()
        return converted

    def _model_config(self, folder: Path | None) -> ModelConfig:
        overrides: dict[str, Any] = dict(self.config.model_overrides)
        overrides.setdefault("modalities", list(ENCODERS_OF[self.benchmark.modality]))
        if self.benchmark.modality == "text_pair":
            overrides.setdefault("text_segments", 2)
        if "image" in ENCODERS_OF[self.benchmark.modality]:
            overrides.setdefault("image_channels", self.config.augment.image.channels)
        if folder is not None:  # the pretrained model's architecture, the task's encoders
            return load_model_config(read_library_config(folder).model, **overrides)
        if self.tokenizer is not None:
            overrides.setdefault("vocab_size", self.tokenizer.vocab_size)
        return load_model_config(self.config.model, **overrides)

    def build_model(self) -> tuple[nn.Module, ModelConfig]:
        folder = self._initial_folder()
        self.model_config = self._model_config(folder)
        if self.tokenizer is not None and self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"the model's vocab_size={self.model_config.vocab_size} is smaller than the "
                             f"tokenizer's {self.tokenizer.vocab_size} ids ({self.config.tokenizer})")
        model = build_model(self.benchmark.model_task, self.model_config,
                            None if self.benchmark.regression else self.benchmark.num_outputs)
        if folder is not None:
            load_pretrained_weights(model, folder)
            logger.info("initial weights from %s", folder)
        if self.config.linear_probe:
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name.startswith("head."))
        return model, self.model_config

    # -- schedule and data -----------------------------------------------------------------------------------

    def schedule(self, config: FinetuneConfig) -> tuple[int, OptimizerSettings]:
        self.rank = _rank()
        self.ranks = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if config.eval_only:  # no optimizer step is taken
            return 1, config.optimizer
        self.plan = EpochPlan(self.train_examples, config.deepspeed.micro_batch_size,
                              config.deepspeed.gradient_accumulation_steps, self.ranks, config.seed)
        self.plan.check(self.benchmark.train_split)
        per_epoch = self.plan.steps_per_epoch
        warmup = max(1, round(config.warmup_epochs * per_epoch))
        return config.epochs * per_epoch, dataclasses.replace(config.optimizer, warmup_steps=warmup)

    def setup(self, trainer: Trainer) -> str | None:
        if self.config.ema.decay > 0:
            self.ema = WeightEMA(trainer.engine.module, self.config.ema)
        shards = self.config.train_shards
        if shards.path and not self.config.eval_only:
            kind = SHARD_KIND_OF[self.benchmark.modality]
            data = DataConfig(seed=self.config.seed, lanes=shards.lanes, unit_size=shards.unit_size,
                              shuffle_buffer=shards.shuffle_buffer, strict=shards.strict,
                              streams=[StreamConfig(name="train_shards", path=shards.path, kind=kind)])
            builder = ShardBatchBuilder(self.batcher, "train_shards", kind)
            self.streams = PretrainStreams(
                data, self.config.deepspeed.micro_batch_size // shards.unit_size, lambda *_: builder,
                data_parallel_rank=self.rank, data_parallel_size=self.ranks, num_workers=self.config.num_workers,
                kinds=(kind,), reader=f"fine-tuning {self.benchmark.name}")
        return None

    def _start_loader(self) -> None:
        total = self.plan.steps_per_epoch * self.config.epochs * self.plan.accumulation
        dataset = TrainingBatches(self.train_split.examples, self.plan, self.rank, self.batcher, total)
        self.loader = training_loader(dataset, self.micro_batches, self.config.num_workers)

    def micro_batch(self) -> tuple[list[Part], float]:
        if self.streams is not None:
            [(part, weight)], waited = self.streams.next()
            self.micro_batches += 1
            batch = part.batch
            return [Part(batch, weight, part.samples, part.samples * self._tokens_per_sample(batch))], waited
        if self.loader is None:
            self._start_loader()
        began = time.perf_counter()
        item = next(self.loader)
        self.micro_batches += 1
        batch = item["batch"]
        samples = int(batch["targets" if "targets" in batch else "labels"].shape[0])
        return [Part(batch, 1.0, samples, samples * self._tokens_per_sample(batch))], time.perf_counter() - began

    def _tokens_per_sample(self, batch: dict[str, Tensor]) -> int:
        """The mean input tokens of a sample: text tokens (padding left out), image patches, point groups."""
        tokens = 0
        if "text_attention_mask" in batch:
            tokens += int(batch["text_attention_mask"].sum()) // batch["text_attention_mask"].shape[0]
        side = self.model_config.patch_size
        for key in ("images", "images2"):
            if key in batch:
                tokens += (batch[key].shape[-2] // side) * (batch[key].shape[-1] // side)
        if "points" in batch:
            tokens += self.model_config.point_tokens or batch["points"].shape[1]
        return max(1, tokens)

    def losses(self, engine: Any, parts: Sequence[Part]) -> tuple[Tensor, dict[str, Tensor]]:
        (part,) = parts
        batch = _to_dtype(part.batch, next(engine.module.parameters()).dtype)
        outputs = engine(batch)
        if self.benchmark.regression:
            loss = F.mse_loss(outputs.float().reshape(-1), batch["labels"].float())
        elif self.batcher.soft_targets:
            loss = VQAHead.loss(outputs.float(), batch["targets"])
        else:
            loss = soft_target_cross_entropy(outputs, batch["targets"])
        # A stand-in (weight 0: a streamed micro-batch whose samples were all skipped) runs for ZeRO's sake only.
        return loss * part.weight, ({"task": loss.detach()} if part.weight > 0 else {})

    # -- evaluation ------------------------------------------------------------------------------------------

    def has_evaluation(self) -> bool:
        return True

    def should_evaluate(self, step: int, config: FinetuneConfig) -> bool:
        every = config.eval.every_epochs
        return bool(every) and self.plan is not None and step % (every * self.plan.steps_per_epoch) == 0

    def after_step(self, trainer: Trainer, record: StepRecord, metrics: MetricsLogger) -> None:
        if self.ema is not None and record.applied:
            self.ema.update()

    @torch.no_grad()
    def predict(self, model: nn.Module, split: Split, votes: int = 0) -> np.ndarray:
        """Every example's outputs on ``split`` (``[N, C]`` class scores or ``[N]`` values), each example
        evaluated exactly once over the ranks; every rank gets them all. ``votes``: point clouds' test-time voting
        (:func:`~itnet_scale.tasks.modelnet40.vote`, seeded) instead of one view."""
        partition = EvalPartition(len(split.examples), self.ranks, self.config.eval.batch_size)
        indices = partition.rank_indices(self.rank)
        dtype = next(model.parameters()).dtype
        was_training = model.training
        model.eval()
        outputs = []
        try:
            for start in range(0, len(indices), partition.batch_size):
                chunk = indices[start:start + partition.batch_size]
                inputs = _to_dtype(self.batcher.inputs([split.examples[i] for i in chunk]), dtype)
                if votes:
                    outputs.append(vote(lambda points: model({"points": points}).float(), inputs["points"], votes,
                                        self.config.seed))
                else:
                    outputs.append(model(inputs).float())
        finally:
            model.train(was_training)
        local = torch.cat(outputs)
        return partition.gather(local).numpy()

    def _evaluate_splits(self, model: nn.Module) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, split in self.eval_splits.items():
            predictions = self.predict(model, split)
            self.predictions[name] = predictions
            if split.labelled:
                for metric, value in self.benchmark.evaluate_split(predictions, split).items():
                    values[f"{name}/{metric}"] = float(value)
            if self.config.eval.votes and split.labelled:  # next to the plain accuracy of the same weights
                voted = self.predict(model, split, self.config.eval.votes)
                for metric, value in self.benchmark.evaluate_split(voted, split).items():
                    values[f"{name}/vote{self.config.eval.votes}_{metric}"] = float(value)
        return values

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.ema is None:
            return self._evaluate_splits(model)
        with self.ema.swapped_in():
            return self._evaluate_splits(model)

    def after_evaluation(self, trainer: Trainer, values: dict[str, float]) -> None:
        if self.primary not in values:
            return
        decision = self.early_stopping.update(values[self.primary], trainer.step)
        if decision.improved:
            self.save_best(trainer, values)

    def should_stop(self) -> bool:
        return self.early_stopping.should_stop

    # -- outputs ---------------------------------------------------------------------------------------------

    def provenance(self, values: dict[str, float]) -> dict[str, Any]:
        """What a fine-tuned model folder records of its benchmark (the library config's ``source``)."""
        image = dataclasses.asdict(self.config.augment.image)
        return {"benchmark": self.benchmark.name, "label_names": list(self.benchmark.label_names or []),
                "primary_metric": self.primary, "metrics": values, "metric_info": self.benchmark.metric_info(),
                "init_from": self.config.init_from,
                "max_text_tokens": self.config.max_text_tokens, "image": image}

    def save_best(self, trainer: Trainer, values: dict[str, float]) -> None:
        """The current weights (the EMA's when kept) as a library folder in ``RUN/best``, with the tokenizer."""
        model = trainer.engine.module
        context = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with context, _gathered(model, trainer.engine.zero_optimization_stage()):
            if self.rank == 0:
                folder = save_pretrained(model, self.config.best_dir, overwrite=True, dtype="fp32",
                                         source=self.provenance(values))
                if self.tokenizer is not None:  # the model folder predicts from raw text on its own
                    (folder / "tokenizer").mkdir(exist_ok=True)
                    for name in (TOKENIZER_MODEL, TOKENIZER_CONFIG):
                        shutil.copyfile(Path(self.config.tokenizer) / name, folder / "tokenizer" / name)
        _barrier()

    def finish(self, trainer: Trainer, result: TrainResult) -> None:
        if self.rank == 0 and result.evaluations:
            best = self.early_stopping.best
            summary = {"task": self.benchmark.name, "primary_metric": self.primary, "best": best,
                       "metric_info": self.benchmark.metric_info(),
                       "best_step": self.early_stopping.best_step, "last": result.evaluations[-1],
                       "steps": trainer.step, "epochs": trainer.step / max(self.plan.steps_per_epoch, 1)
                       if self.plan else 0}
            path = Path(self.config.run_dir) / "metrics.json"
            write_bytes_atomically(path, (json.dumps(summary, indent=2) + "\n").encode())
            print(f"best {self.primary} = {best} at step {self.early_stopping.best_step}; model: "
                  f"{self.config.best_dir}", flush=True)

    # -- state -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"micro_batches": self.micro_batches, "early_stopping": self.early_stopping.state_dict()}
        if self.streams is not None:
            state["streams"] = self.streams.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (self.streams is None) != ("streams" not in state):
            raise ValueError("the checkpoint was trained on the " + ("split's files" if "streams" not in state else
                             "streamed train_shards") + "; resume it the same way (train_shards.path)")
        self.micro_batches = int(state["micro_batches"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        if self.streams is not None:
            self.streams.load_state_dict(state["streams"])
        self.loader = None

    def client_state(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark.name}

    def save_files(self, tag_dir: Path) -> None:
        if self.ema is not None:
            self.ema.save(tag_dir)

    def load_files(self, tag_dir: Path) -> None:
        if self.ema is not None:
            self.ema.load(tag_dir)


def _to_dtype(batch: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Floating-point inputs in the model's dtype; labels and soft targets stay fp32."""
    keep = ("labels", "targets")
    return {k: v.to(dtype) if v.is_floating_point() and k not in keep else v for k, v in batch.items()}


def _gathered(model: nn.Module, stage: int) -> Any:
    """Every parameter whole on every rank for the block (ZeRO-3 partitions them), else nothing to do."""
    if stage < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


class Finetuner(Trainer):
    """The trainer core running :class:`FinetuningRecipe` on ``config``."""

    def __init__(self, config: FinetuneConfig, deepspeed_config_file: str | Path | None = None) -> None:
        self.recipe: FinetuningRecipe
        super().__init__(config, FinetuningRecipe(config), deepspeed_config_file)

    def evaluate_only(self) -> dict[str, float]:
        """``eval_only``: the metrics of ``split`` (or the validation splits) and, for a split without labels,
        the benchmark's submission file in ``RUN/``; ``RUN/metrics.json`` holds the metrics (and the split)."""
        recipe, config = self.recipe, self.config
        values = recipe.evaluate(self.engine.module, self.step)
        if self.rank == 0:
            run = Path(config.run_dir)
            run.mkdir(parents=True, exist_ok=True)
            written = []
            for name, split in recipe.eval_splits.items():
                if name in recipe.benchmark.test_splits or not split.labelled:
                    ids = [example.id for example in split.examples]
                    written.append(str(recipe.benchmark.write_submission(run, name, ids, recipe.predictions[name])))
            summary = {"task": recipe.benchmark.name, "splits": list(recipe.eval_splits), "metrics": values,
                       "metric_info": recipe.benchmark.metric_info(),
                       "labels": list(recipe.benchmark.label_names or []), "submissions": written,
                       "model": config.init_from}
            write_bytes_atomically(run / "metrics.json", (json.dumps(summary, indent=2) + "\n").encode())
            for line in [f"{k} = {v:.6g}" for k, v in values.items()] + [f"submission: {p}" for p in written]:
                print(line, flush=True)
        return values


def fine_tune(config: FinetuneConfig, deepspeed_config_file: str | Path | None = None) -> TrainResult | dict:
    """Build a :class:`Finetuner` and train (or, with ``eval_only``, evaluate)."""
    trainer = Finetuner(config, deepspeed_config_file)
    return trainer.evaluate_only() if config.eval_only else trainer.run()


__all__ = ["ENCODERS_OF", "Finetuner", "FinetuningRecipe", "fine_tune"]
