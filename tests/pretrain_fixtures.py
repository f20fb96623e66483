"""Shared by the pretraining tests: small demo data, a fast config, and reading a checkpoint's weights."""

from __future__ import annotations

from pathlib import Path

import torch

from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.tokenizer import Tokenizer, TokenizerConfig
from itnet_scale.models.itnet import ITNetForPretraining
from itnet_scale.train.config import PretrainConfig, load_pretrain_config
from itnet_scale.train.evaluation import Evaluator
from itnet_scale.train.pretrain_data import MicroBatchBuilder

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "pretrain" / "demo.yaml"


def small_demo_data(directory: Path) -> Path:
    """The demo's four shard sets and tokenizer, small (a few seconds to build)."""
    build_demo_data(directory, samples_per_kind=96, point_clouds_per_class=16, num_points=256, shard_samples=24,
                    tokenizer=TokenizerConfig(vocab_size=400))
    return directory


def fast_overrides(data: Path, run_dir: Path, steps: int, **extra: object) -> list[str]:
    """Overrides of configs/pretrain/demo.yaml for a run that takes about a second per few steps (no held-out
    evaluation nor kernel atlas unless ``extra`` asks for it)."""
    overrides = {
        "run_dir": run_dir, "steps": steps, "tokenizer": data / "tokenizer",
        "data_overrides": f"[data_root={data},unit_size=4]",
        "model_overrides.dim": 64, "model_overrides.depth": 2, "model_overrides.heads": 2,
        "model_overrides.contrastive_dim": 32, "model_overrides.point_hidden": 32,
        "objectives.max_text_tokens": 32, "objectives.max_caption_tokens": 16,
        "optimizer.warmup_steps": 3, "logging.print_every": 1,
        "eval.every": 0, "eval.at_start": False, "eval.at_end": False, "logging.atlas_every": 0, **extra}
    return [f"{key}={value}" for key, value in overrides.items()]


def config_for(demo: Path, tmp_path: Path, *extra: str, **overrides: object) -> PretrainConfig:
    """The fast demo config with held-out evaluation in batches of 8, calibrated on 2 batches."""
    settings = {"eval.batch_size": 8, "eval.calibration_batches": 2, **overrides}
    return load_pretrain_config(DEMO_CONFIG, [*fast_overrides(demo, tmp_path / "run", 4, **settings), *extra])


def evaluator_for(config: PretrainConfig, rank: int = 0, world_size: int = 1) -> tuple[Evaluator, ITNetForPretraining]:
    """``config``'s :class:`Evaluator` for one rank, and the model of ``config`` initialized with seed 0."""
    data, tokenizer = config.data_config(), Tokenizer.from_dir(config.tokenizer)
    model_config = config.model_config(tokenizer.vocab_size)

    def builder(stream: str, kind: str, index: int) -> MicroBatchBuilder:
        return MicroBatchBuilder(stream, kind, index, config.tokenizer, config.objectives, model_config, data.seed)

    torch.manual_seed(0)
    evaluator = Evaluator(data, config.eval, tokenizer, builder, prompt_tokens=config.objectives.max_caption_tokens,
                          rank=rank, world_size=world_size)
    return evaluator, ITNetForPretraining(model_config)


def checkpoint_weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a DeepSpeed checkpoint folder (any ZeRO stage), through DeepSpeed's consolidation,
    read weights-only."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from itnet_scale.checkpoint.deepspeed_checkpoint import load_weights_only, weights_only_loads

    if list(tag_dir.glob("*optim_states.pt")):
        with weights_only_loads():
            return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return dict(load_weights_only(tag_dir / "mp_rank_00_model_states.pt")["module"])
