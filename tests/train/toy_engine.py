"""A small DeepSpeed engine for the multi-rank train tests (run inside workers started by the launcher)."""

from __future__ import annotations

import deepspeed
import torch

from itnet_scale.train.deepspeed_config import DeepSpeedSettings, build_deepspeed_config
from itnet_scale.train.optimizer import OptimizerSettings, build_lr_schedule, build_optimizer


def build(stage: int):
    """(engine, optimizer): a 16→32→16 MLP under ZeRO ``stage``, AdamW lr 1e-2, 2 warm-up steps of 20."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    settings = OptimizerSettings(lr=1e-2, warmup_steps=2)
    optimizer = build_optimizer(model, settings)
    config = build_deepspeed_config(DeepSpeedSettings(zero_stage=stage, micro_batch_size=4), on_cpu=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                      lr_scheduler=build_lr_schedule(optimizer, settings, total_steps=20))
    return engine, optimizer


def loss_of(engine, x: torch.Tensor) -> torch.Tensor:
    return (engine(x) - x.flip(-1)).square().mean()


def weights(engine) -> dict[str, torch.Tensor]:
    """The full fp32 weights, whatever the ZeRO stage (gathered from the partitions for ZeRO 1–3)."""
    def full(p: torch.nn.Parameter) -> torch.Tensor:
        master = deepspeed.utils.safe_get_full_fp32_param(p)
        return (p if master is None else master).detach().clone()

    return {name: full(p) for name, p in engine.module.named_parameters()}


def shut_down() -> None:
    """Leave the process group cleanly (an abrupt exit can abort gloo's teardown)."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
