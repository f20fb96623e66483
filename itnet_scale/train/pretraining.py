"""The pretraining recipe: multimodal streams, the four objectives, held-out evaluation, the kernel atlas.

:class:`PretrainingRecipe` is what pretraining adds to the trainer core (:mod:`itnet_scale.train.loop`): the
tokenizer and :class:`~itnet_scale.models.itnet.ITNetForPretraining` (optionally starting from a library-format
model, ``init_from``), the per-stream data (:mod:`~itnet_scale.train.pretrain_data`) whose positions a checkpoint
saves, every stream's objectives per micro-step (:func:`~itnet_scale.train.objectives.micro_step_losses`, the
contrastive one against every data-parallel rank's pairs), the held-out evaluation
(:class:`~itnet_scale.train.evaluation.Evaluator`: every ``eval.every`` steps, at the start, at the end) and the
kernel atlas in TensorBoard (``logging.atlas_every``).

:class:`Pretrainer` is the trainer core running this recipe; ``launch/pretrain.py`` builds one from the config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itnet_scale.atlas import atlas, require_matplotlib
from itnet_scale.checkpoint.library import load_pretrained_weights
from itnet_scale.data.tokenizer import Tokenizer
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.train.config import OBJECTIVES, PretrainConfig
from itnet_scale.train.evaluation import Evaluator
from itnet_scale.train.loop import Part, Recipe, StepRecord, Trainer, TrainResult
from itnet_scale.train.metrics_logger import MetricsLogger
from itnet_scale.train.objectives import gather_rows, micro_step_losses
from itnet_scale.train.pretrain_data import MicroBatchBuilder, PretrainStreams
from itnet_scale.train.rng import preserved_rng_state

logger = logging.getLogger(__name__)


class PretrainingRecipe(Recipe):
    """Pretraining (see the module doc). ``allow_pipe_urls``: the command line's consent to ``pipe:`` stream paths
    (a config cannot give it)."""

    loss_names = OBJECTIVES

    def __init__(self, config: PretrainConfig, *, allow_pipe_urls: bool = False) -> None:
        self.config, self.allow_pipe_urls = config, allow_pipe_urls
        self.tokenizer = Tokenizer.from_dir(config.tokenizer)
        self.model_config = config.model_config(vocab_size=self.tokenizer.vocab_size)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model_overrides.vocab_size={self.model_config.vocab_size} is smaller than the "
                             f"tokenizer's {self.tokenizer.vocab_size} ids ({config.tokenizer})")
        self.data = config.data_config()
        self.streams: PretrainStreams | None = None
        self.evaluator: Evaluator | None = None
        self.group = None

    def build_model(self) -> tuple[ITNetForPretraining, ModelConfig]:
        model = ITNetForPretraining(self.model_config)
        if self.config.init_from is not None:
            load_pretrained_weights(model, self.config.init_from)
            logger.info("initial weights from %s", self.config.init_from)
        return model, self.model_config

    def setup(self, trainer: Trainer) -> str | None:
        config, data, sp = self.config, self.data, trainer.sp
        self.group = sp.data_parallel_group

        def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
            return MicroBatchBuilder(stream, kind, index, config.tokenizer, config.objectives, self.model_config,
                                     data.seed)

        self.streams = PretrainStreams(
            data, config.deepspeed.micro_batch_size // data.unit_size, builder, num_workers=config.num_workers,
            data_parallel_rank=sp.data_parallel_rank, data_parallel_size=sp.data_parallel_size,
            allow_pipe_urls=self.allow_pipe_urls)
        try:  # a held-out set that cannot be read stops every rank alike, reported once
            self.evaluator = Evaluator(data, config.eval, self.tokenizer, builder,
                                       prompt_tokens=config.objectives.max_caption_tokens,
                                       rank=sp.data_parallel_rank, world_size=sp.data_parallel_size,
                                       group=sp.data_parallel_group, allow_pipe_urls=self.allow_pipe_urls)
        except (OSError, ValueError) as error:
            return str(error)
        if config.logging.atlas_every:
            try:
                require_matplotlib()
            except ImportError as error:
                return f"logging.atlas_every: {error}"
        return None

    # -- one micro-step --------------------------------------------------------------------------------------

    def micro_batch(self) -> tuple[list[Part], float]:
        parts, waited = self.streams.next()
        return [Part(micro.batch, weight, micro.samples, micro.tokens) for micro, weight in parts], waited

    def losses(self, engine: Any, parts: Sequence[Part]) -> tuple[Tensor, dict[str, Tensor]]:
        gather = None
        if self.config.objectives.gather_contrastive:
            def gather(rows: Tensor) -> tuple[Tensor, int]:
                return gather_rows(rows, self.group)
        return micro_step_losses(engine, parts, self.config.objectives, gather)

    # -- evaluation and the atlas ----------------------------------------------------------------------------

    def has_evaluation(self) -> bool:
        return bool(self.evaluator)

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """The held-out evaluation (:mod:`~itnet_scale.train.evaluation`)."""
        return self.evaluator.evaluate(model)

    def after_step(self, trainer: Trainer, record: StepRecord, metrics: MetricsLogger) -> None:
        every = self.config.logging.atlas_every
        if every and trainer.step % every == 0:
            self.log_atlas(trainer, metrics)

    def log_atlas(self, trainer: Trainer, metrics: MetricsLogger) -> None:
        """The kernel atlas (:mod:`itnet_scale.atlas`) of each held-out set's first batch, to TensorBoard. Every
        rank runs the same forwards (ZeRO-3 gathers parameters inside them); rank 0 writes. The random generators
        are left as they were, so the run trains as one without it."""
        model = trainer.engine.module
        dtype = next(model.parameters()).dtype
        with preserved_rng_state():
            for stream, batch in self.evaluator.inspection_batches(self.config.logging.atlas_samples, dtype).items():
                metrics.log_atlas(trainer.step, stream, atlas(model, batch))

    # -- state -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return self.streams.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streams.load_state_dict(state)

    def client_state(self) -> dict[str, Any]:
        return {"objectives": self.streams.objectives}


class Pretrainer(Trainer):
    """The trainer core running :class:`PretrainingRecipe` on ``config``. ``deepspeed_config_file``: the user's
    own DeepSpeed JSON, merged over the generated one; ``allow_pipe_urls``: the command line's consent to
    ``pipe:`` stream paths."""

    def __init__(self, config: PretrainConfig, deepspeed_config_file: str | Path | None = None, *,
                 allow_pipe_urls: bool = False) -> None:
        self.recipe: PretrainingRecipe
        super().__init__(config, PretrainingRecipe(config, allow_pipe_urls=allow_pipe_urls), deepspeed_config_file)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.recipe.tokenizer

    @property
    def streams(self) -> PretrainStreams:
        return self.recipe.streams

    @property
    def evaluator(self) -> Evaluator:
        return self.recipe.evaluator


def run_pretraining(config: PretrainConfig, deepspeed_config_file: str | Path | None = None, *,
                    allow_pipe_urls: bool = False) -> TrainResult:
    """Build a :class:`Pretrainer` from ``config`` and run it to ``config.steps``."""
    return Pretrainer(config, deepspeed_config_file, allow_pipe_urls=allow_pipe_urls).run()


__all__ = ["Pretrainer", "PretrainingRecipe", "run_pretraining"]
