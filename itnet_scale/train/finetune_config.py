"""The fine-tuning config (``configs/finetune/*.yaml``): one structured dataclass, checked before anything starts.

``deepspeed launch/finetune.py --config configs/finetune/sst2.yaml data_root=glue_data init_from=models/demo``
reads the YAML, applies the ``key=value`` overrides and checks every value — the benchmark name, the model config,
the sections shared with pretraining (``optimizer``, ``deepspeed``, ``checkpoint``, ``logging``, ``guard``,
``activation_checkpointing``) and those of fine-tuning (``augment``, ``ema``, ``early_stopping``, ``eval``) — so a
bad key, type or value fails on every rank, naming it, before any process group, engine or data loader exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from itnet_scale.config import load_config
from itnet_scale.data.augment import AugmentSettings
from itnet_scale.tasks import BENCHMARKS, Benchmark, get_benchmark
from itnet_scale.tasks.vqa import VQASettings, VQAv2
from itnet_scale.train.config import RunConfig
from itnet_scale.train.early_stopping import EarlyStoppingSettings
from itnet_scale.train.ema import EMASettings
from itnet_scale.train.finetune_data import SHARD_KIND_OF


@dataclass
class FinetuneEvalSettings:
    """The validation split(s) are evaluated every ``every_epochs`` epochs (and ``at_end``; ``at_start``: the
    untrained baseline first), ``batch_size`` examples per forward on each rank, each example exactly once over
    the ranks (:class:`~itnet_scale.data.eval_partition.EvalPartition`). ``votes``: ModelNet40's test-time voting
    views (0: none), reported next to the plain accuracy of the same weights."""

    every_epochs: int = 1
    at_start: bool = False
    at_end: bool = True
    batch_size: int = 64
    votes: int = 0

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ValueError(f"eval.every_epochs must be >= 0 (0 = only at the end), got {self.every_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.votes < 0:
            raise ValueError(f"eval.votes must be >= 0, got {self.votes}")

    @property
    def every(self) -> int:
        return 0  # in epochs, not steps: the recipe schedules the evaluations (FinetuningRecipe.should_evaluate)


@dataclass
class TrainShardSettings:
    """Stream the training split from a shard set (``path``: a folder or an ``http(s)://`` URL, as
    ``tools/make_shards.py`` writes a benchmark's labelled split) instead of reading it from ``data_root``, which
    still holds the evaluation splits. The stream is pretraining's (:mod:`itnet_scale.data.stream`): ``lanes``
    resampled shard visits through a ``shuffle_buffer``, read in units of ``unit_size`` samples (the micro-batch
    is whole units), resumable exactly; ``strict``: a bad shard is an error rather than skipped and counted.
    An epoch is the set's ``samples`` (its index) drawn from the stream, not a pass without repeats."""

    path: str = ""
    lanes: int = 16
    unit_size: int = 8
    shuffle_buffer: int = 256
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("lanes", "unit_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"train_shards.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run of one benchmark (``task``: a name of :data:`itnet_scale.tasks.BENCHMARKS`).

    ``data_root``: the benchmark's files in their official layout. ``init_from``: the pretrained weights — a
    library-format model folder, or a DeepSpeed checkpoint folder (converted on the fly); None: from scratch (the
    baseline). ``model`` + ``model_overrides`` as in pretraining (the size must match ``init_from``'s).
    ``tokenizer``: the tokenizer folder (text tasks; a library-format model folder that carries one wins).
    ``max_text_tokens``: truncation of a text or a pair (specials counted). ``epochs`` over the training split
    (the last partial global batch of an epoch is dropped); ``warmup_epochs``: the learning rate's linear warm-up.
    ``train_shards``: stream the training split from a shard set (:class:`TrainShardSettings`). ``vqav2``: VQA v2's
    answer vocabulary, minival and evaluation revision (:class:`~itnet_scale.tasks.vqa.VQASettings`; read by the
    ``vqav2`` task only).
    ``linear_probe``: train the head only, the backbone frozen. ``eval_only``: evaluate ``init_from`` on
    ``split`` (default: the validation split(s)) and, for a split without labels, write the benchmark's
    submission file — no training. ``num_workers``: data-loading processes per rank.
    """

    run_dir: str = "runs/finetune"
    task: str = ""
    data_root: str = ""
    max_text_tokens: int = 128
    epochs: int = 10
    warmup_epochs: float = 1.0
    linear_probe: bool = False
    eval_only: bool = False
    split: str = ""
    train_shards: TrainShardSettings = field(default_factory=TrainShardSettings)
    vqav2: VQASettings = field(default_factory=VQASettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    ema: EMASettings = field(default_factory=EMASettings)
    early_stopping: EarlyStoppingSettings = field(default_factory=EarlyStoppingSettings)
    eval: FinetuneEvalSettings = field(default_factory=FinetuneEvalSettings)

    def __post_init__(self) -> None:
        if self.task not in BENCHMARKS:
            raise ValueError(f"task must name a benchmark, one of {sorted(BENCHMARKS)}; got {self.task!r}")
        if not self.data_root:
            raise ValueError("data_root is required: the folder holding the benchmark's files")
        benchmark = self.benchmark
        if benchmark.train_split is None and not self.eval_only:
            raise ValueError(f"task {self.task!r} has no training data (it is predicted by a model fine-tuned on "
                             f"{benchmark.predicted_by!r}): set eval_only=true and init_from=that model")
        if self.eval_only and self.init_from is None:
            raise ValueError("eval_only=true needs init_from (the fine-tuned model to evaluate)")
        splits = {benchmark.train_split, *benchmark.eval_splits, *benchmark.test_splits} - {None}
        if self.split and self.split not in splits:
            raise ValueError(f"split={self.split!r} is not a split of {self.task}: {sorted(splits)}")
        if self.train_shards.path:
            if benchmark.modality not in SHARD_KIND_OF:
                raise ValueError(f"train_shards.path: {self.task} ({benchmark.modality}) has no shard-set kind; it "
                                 f"trains from data_root's files (streamed: {sorted(SHARD_KIND_OF)})")
            if self.eval_only:
                raise ValueError("train_shards.path streams training data; eval_only=true trains nothing (it reads "
                                 "the split from data_root)")
            if self.deepspeed.micro_batch_size % self.train_shards.unit_size:
                raise ValueError(f"deepspeed.micro_batch_size={self.deepspeed.micro_batch_size} must be a multiple "
                                 f"of train_shards.unit_size={self.train_shards.unit_size} (a micro-batch is whole "
                                 "units of the stream)")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.max_text_tokens < 4:
            raise ValueError(f"max_text_tokens must be >= 4 (<cls>, a token, two <sep>), got {self.max_text_tokens}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.sequence_parallel_size != 1:
            raise ValueError("sequence_parallel_size: fine-tuning runs whole sequences on every rank (1); sequence "
                             "parallelism is for pretraining's long sequences")
        if self.eval.votes and benchmark.modality != "points":
            raise ValueError(f"eval.votes is test-time voting over point-cloud views; task {self.task!r} is "
                             f"{benchmark.modality}")
        try:
            self.model_config()
        except ValueError as error:
            raise ValueError(f"model {self.model!r} with model_overrides: {error}") from None

    @property
    def benchmark(self) -> Benchmark:
        """The task's benchmark, with its settings section where it has one (``vqav2``)."""
        return VQAv2(self.vqav2) if self.task == "vqav2" else get_benchmark(self.task)

    @property
    def best_dir(self) -> Path:
        """``RUN/best``: the library-format model of the best evaluation by the task's metric."""
        return Path(self.run_dir) / "best"


def load_finetune_config(path: str | Path | None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Read a :class:`FinetuneConfig` YAML with ``key=value`` overrides; any problem raises ``ValueError`` (or
    ``FileNotFoundError``) naming the key and the file or override."""
    return load_config(FinetuneConfig, path, overrides, what="fine-tuning config")


__all__ = ["FinetuneConfig", "FinetuneEvalSettings", "TrainShardSettings", "load_finetune_config"]
