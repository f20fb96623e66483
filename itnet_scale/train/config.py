"""The pretraining config (``configs/pretrain/*.yaml``): one structured dataclass, checked before anything starts.

``deepspeed launch/pretrain.py --config configs/pretrain/demo.yaml steps=50 deepspeed.zero_stage=2`` reads the
YAML, applies the ``key=value`` overrides (omegaconf dot-list syntax) and checks every value — including the model
config it names (built from ``model`` + ``model_overrides``) and the data config file — so a bad key, type or
value fails on every rank, naming it, before any process group, engine or data loader exists.

Sections: ``objectives`` (masking and loss weights), ``eval`` (held-out evaluation), ``optimizer``
(:class:`~itnet_scale.train.optimizer.OptimizerSettings`), ``deepspeed``
(:class:`~itnet_scale.train.deepspeed_config.DeepSpeedSettings`), ``checkpoint``, ``logging`` and ``guard``
(:class:`~itnet_scale.train.step_guard.StepGuard`'s loss-spike rule), ``activation_checkpointing``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itnet_scale.config import load_config
from itnet_scale.data.stream import DataConfig, load_data_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.registry import load_model_config
from itnet_scale.nn.backbone import check_checkpoint_every
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.optimizer import OptimizerSettings

#: The objectives each kind of stream trains (image–text: contrastive + image-conditioned MLM).
OBJECTIVES_OF_KIND = {"text": ("mlm",), "image_text": ("itc", "mlm"), "image": ("mpm",), "points": ("mpp",)}
OBJECTIVES = ("mlm", "itc", "mpm", "mpp")


@dataclass
class ObjectiveSettings:
    """How batches are masked, and the weight of each objective's loss in the total.

    ``mlm_probability``: BERT's share of text tokens picked for MLM; ``max_text_tokens`` /
    ``max_caption_tokens``: truncation of text samples and captions (specials included); ``image_mask_ratio`` /
    ``point_mask_ratio``: the share of patches / point groups hidden for masked patch / point modeling;
    ``loss_weights``: per objective (``mlm``, ``itc``, ``mpm``, ``mpp``), 1 where not given;
    ``gather_contrastive``: contrast against every data-parallel rank's image–text pairs, not the local ones.
    """

    mlm_probability: float = 0.15
    max_text_tokens: int = 128
    max_caption_tokens: int = 32
    image_mask_ratio: float = 0.4
    point_mask_ratio: float = 0.4
    loss_weights: dict[str, float] = field(default_factory=dict)
    gather_contrastive: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"objectives.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        for name in ("image_mask_ratio", "point_mask_ratio"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"objectives.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("max_text_tokens", "max_caption_tokens"):
            if getattr(self, name) < 3:
                raise ValueError(f"objectives.{name} must be >= 3 (<cls>, a token, <sep>), got {getattr(self, name)}")
        for name, weight in self.loss_weights.items():
            if name not in OBJECTIVES:
                raise ValueError(f"objectives.loss_weights: unknown objective {name!r}; known: {list(OBJECTIVES)}")
            if not weight >= 0:
                raise ValueError(f"objectives.loss_weights.{name} must be >= 0, got {weight}")

    def weight(self, objective: str) -> float:
        return float(self.loss_weights.get(objective, 1.0))


@dataclass
class CheckpointSettings:
    """Saves under ``RUN/checkpoints`` every ``save_every`` optimizer steps and at the end, keeping the newest
    ``keep_last`` (0 = all). ``resume``: continue from ``latest`` when there is one (the same command restarts a
    killed run); ``load_universal``: the checkpoint to resume is a DeepSpeed universal checkpoint
    (``ds_to_universal``), e.g. to continue on another number of ranks."""

    save_every: int = 100
    keep_last: int = 2
    resume: bool = True
    load_universal: bool = False

    def __post_init__(self) -> None:
        if self.save_every < 1:
            raise ValueError(f"checkpoint.save_every must be >= 1, got {self.save_every}")
        if self.keep_last < 0:
            raise ValueError(f"checkpoint.keep_last must be >= 0 (0 = keep all), got {self.keep_last}")


@dataclass
class LoggingSettings:
    """TensorBoard scalars under ``RUN/tensorboard`` every ``log_every`` steps; plain progress lines every
    ``print_every`` steps when stdout is not a terminal. ``peak_flops_per_rank``: the hardware's peak FLOP/s of one
    rank at the training precision, for model FLOPs utilization (0 = MFU not reported). ``atlas_every``: every
    that many steps (0 = never), the kernel atlas (:mod:`itnet_scale.atlas`) of the first ``atlas_samples`` samples
    of each held-out set's first batch goes to TensorBoard under ``atlas/<stream>/…``: every head's scores as
    scalars, the summary and each layer's kernel heatmaps as images (needs matplotlib: the ``atlas`` extra)."""

    log_every: int = 1
    print_every: int = 10
    peak_flops_per_rank: float = 0.0
    atlas_every: int = 0
    atlas_samples: int = 8

    def __post_init__(self) -> None:
        if self.log_every < 1 or self.print_every < 1:
            raise ValueError(f"logging.log_every and print_every must be >= 1, got {self.log_every}, "
                             f"{self.print_every}")
        if self.atlas_every < 0:
            raise ValueError(f"logging.atlas_every must be >= 0 (0 = off), got {self.atlas_every}")
        if self.atlas_samples < 2:
            raise ValueError(f"logging.atlas_samples must be >= 2 (content dependence compares samples), got "
                             f"{self.atlas_samples}")
        if self.peak_flops_per_rank < 0:
            raise ValueError(f"logging.peak_flops_per_rank must be >= 0, got {self.peak_flops_per_rank}")


@dataclass
class GuardSettings:
    """The loss-spike rule: skip a step whose loss exceeds ``spike_factor ×`` the mean of the last
    ``spike_window`` accepted steps, once ``spike_warmup`` were accepted (``spike_factor: 0`` = off). Non-finite
    losses and gradients are always skipped."""

    spike_factor: float = 0.0
    spike_window: int = 100
    spike_warmup: int = 20

    def __post_init__(self) -> None:
        if self.spike_factor < 0 or 0 < self.spike_factor <= 1:
            raise ValueError(f"guard.spike_factor must be 0 (off) or > 1, got {self.spike_factor}")
        if self.spike_window < 1 or self.spike_warmup < 0:
            raise ValueError(f"guard.spike_window must be >= 1 and spike_warmup >= 0, got {self.spike_window}, "
                             f"{self.spike_warmup}")


@dataclass
class ZeroShotSettings:
    """Zero-shot classification of a stream's held-out images from caption prompts (open_clip's protocol): each
    class's name in every template (``{}`` marks the name), the text embeddings averaged per class; an image's
    prediction is the class whose embedding is nearest. ``stream``: an ``image`` stream whose held-out set has
    class ids (``cls``); empty: no zero-shot evaluation. ``classes``: the names by class id; empty: the held-out
    index's ``classes``."""

    stream: str = ""
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("eval.zero_shot.templates: at least one template is needed")
        for template in self.templates:
            fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
            if fields != [""]:
                raise ValueError(f"eval.zero_shot.templates: {template!r} must hold exactly one '{{}}' (where the "
                                 "class name goes) and no other field")


@dataclass
class EvalSettings:
    """Held-out evaluation (:mod:`itnet_scale.train.evaluation`) of every stream that names a ``heldout`` shard
    set: every ``every`` optimizer steps (0: never during the run), with ``at_start`` before the first step of a
    fresh run (the untrained baseline) and with ``at_end`` after the last step.
    ``batch_size``: samples per forward; ``max_batches``: batches per stream, all ranks together (0: the whole
    held-out set); the same subset is evaluated whatever the number of ranks. ``calibration_batches``: before
    each evaluation, the contrastive head's standardization statistics are recomputed with the current weights
    over this many batches of the first training image–text pairs (PreciseBN; 0: keep the running averages, which
    lag behind weights that still move)."""

    every: int = 0
    at_start: bool = False
    at_end: bool = True
    batch_size: int = 32
    max_batches: int = 0
    calibration_batches: int = 8
    zero_shot: ZeroShotSettings = field(default_factory=ZeroShotSettings)

    def __post_init__(self) -> None:
        for name in ("every", "max_batches", "calibration_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ActivationCheckpointingSettings:
    """Activation checkpointing of the backbone's blocks: ``every: k`` recomputes the activations of every k-th
    block (blocks 0, k, 2k, …) in backward instead of keeping them (``1``: all blocks; ``0``: off). It trades about
    one more forward of those blocks for their activation memory; gradients are unchanged (random draws replay;
    :mod:`itnet_scale.nn.backbone`)."""

    every: int = 0

    def __post_init__(self) -> None:
        check_checkpoint_every(self.every, "activation_checkpointing.every")


@dataclass
class RunConfig:
    """What every run config (pretraining, fine-tuning) holds, and what it derives from it: the run folder, the model
    (a registered name or a YAML path, with ``model_overrides``), the tokenizer, the seed, data-loading workers,
    sequence parallelism, the initial weights (``init_from``) and the sections the trainer core reads
    (``optimizer``, ``deepspeed``, ``checkpoint``, ``logging``, ``guard``, ``activation_checkpointing``); the model
    config and the run's folders."""

    run_dir: str = "runs/run"
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "demo_data/tokenizer"
    seed: int = 0
    num_workers: int = 0
    sequence_parallel_size: int = 1
    init_from: str | None = None
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    activation_checkpointing: ActivationCheckpointingSettings = field(default_factory=ActivationCheckpointingSettings)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The model's config: ``model`` with ``model_overrides``; ``vocab_size`` (the tokenizer's) unless the
        overrides set one."""
        overrides = dict(self.model_overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        return load_model_config(self.model, **overrides)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.run_dir) / "tensorboard"

    @property
    def eval_file(self) -> Path:
        """``RUN/eval.jsonl``: one JSON line per evaluation."""
        return Path(self.run_dir) / "eval.jsonl"


@dataclass
class PretrainConfig(RunConfig):
    """A pretraining run.

    ``run_dir`` holds ``checkpoints/``, ``tensorboard/`` and the resolved ``config.yaml``. ``model`` is a
    registered name (``configs/model/*.yaml``) or a YAML path, with ``model_overrides`` (ModelConfig fields) on
    top; ``model_overrides.vocab_size`` defaults to the tokenizer's. ``data`` is a data config YAML
    (:class:`~itnet_scale.data.stream.DataConfig`) with ``data_overrides`` (``key=value``, e.g.
    ``data_root=/shards``). ``steps`` counts optimizer steps. Each rank's micro-batch is
    ``deepspeed.micro_batch_size`` sample slots, i.e. ``micro_batch_size / unit_size`` units, shared among the
    streams by their weights (see :mod:`itnet_scale.train.pretrain_data`). ``num_workers``: DataLoader workers
    per stream and rank. ``sequence_parallel_size``: ranks that share each sequence (DeepSpeed Ulysses).
    ``init_from``: a library-format model folder to start from (weights only).
    """

    run_dir: str = "runs/pretrain"
    data: str = "configs/data/demo.yaml"
    data_overrides: list[str] = field(default_factory=list)
    steps: int = 300
    objectives: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.sequence_parallel_size < 1:
            raise ValueError(f"sequence_parallel_size must be >= 1, got {self.sequence_parallel_size}")
        try:
            self.model_config()
        except ValueError as error:
            raise ValueError(f"model {self.model!r} with model_overrides: {error}") from None
        data = self.data_config()
        heldout = [s.name for s in data.streams if s.heldout]
        if self.eval.every and not heldout:
            raise ValueError(f"eval.every={self.eval.every} but no stream of {self.data} names a heldout shard set")
        if self.logging.atlas_every and not heldout:
            raise ValueError(f"logging.atlas_every={self.logging.atlas_every} but no stream of {self.data} names a "
                             "heldout shard set (the kernel atlas reads the first held-out batch of each)")
        if self.logging.atlas_every and self.sequence_parallel_size > 1:
            raise ValueError(f"logging.atlas_every needs whole sequences on every rank; it cannot run with "
                             f"sequence_parallel_size={self.sequence_parallel_size}")
        if self.eval.zero_shot.stream and self.eval.zero_shot.stream not in heldout:
            raise ValueError(f"eval.zero_shot.stream={self.eval.zero_shot.stream!r} must be a stream with a heldout "
                             f"shard set; those with one: {heldout}")
        if self.deepspeed.micro_batch_size % data.unit_size:
            raise ValueError(f"deepspeed.micro_batch_size={self.deepspeed.micro_batch_size} must be a multiple of "
                             f"the data config's unit_size={data.unit_size} (a micro-batch is whole units)")

    def data_config(self) -> DataConfig:
        """The stream mixture: ``data`` with ``data_overrides``."""
        return load_data_config(self.data, self.data_overrides)


def load_pretrain_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a :class:`PretrainConfig` YAML (or the defaults, ``path=None``) with ``key=value`` overrides; any
    problem raises ``ValueError`` (or ``FileNotFoundError``) naming the key and the file or override."""
    return load_config(PretrainConfig, path, overrides, what="pretrain config")
