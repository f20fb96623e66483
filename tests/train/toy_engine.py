"""A small DeepSpeed engine for the multi-rank train tests (run inside workers started by the launcher)."""

from __future__ import annotations

import deepspeed
import torch

from itnet_scale.train.command_line import exit_process, leave_process_group
from itnet_scale.train.deepspeed_config import DeepSpeedSettings
from itnet_scale.train.engine import build_engine
from itnet_scale.train.optimizer import OptimizerSettings


def build(stage: int, offload_optimizer: bool = False, offload_param: bool = False):
    """(engine, optimizer): a 16→32→16 MLP under ZeRO ``stage`` (optionally offloading the optimizer states and
    the parameters), built as the trainer builds it (:func:`build_engine`): AdamW lr 1e-2, 2 warm-up steps of 20."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    settings = DeepSpeedSettings(zero_stage=stage, micro_batch_size=4, offload_optimizer=offload_optimizer,
                                 offload_param=offload_param)
    return build_engine(model, settings, OptimizerSettings(lr=1e-2, warmup_steps=2), total_steps=20)


def loss_of(engine, x: torch.Tensor) -> torch.Tensor:
    return (engine(x) - x.flip(-1)).square().mean()


def weights(engine) -> dict[str, torch.Tensor]:
    """The full fp32 weights, whatever the ZeRO stage (gathered from the partitions for ZeRO 1–3)."""
    def full(p: torch.nn.Parameter) -> torch.Tensor:
        master = deepspeed.utils.safe_get_full_fp32_param(p)
        return (p if master is None else master).detach().clone()

    return {name: full(p) for name, p in engine.module.named_parameters()}


def held_weights(engine) -> dict[str, torch.Tensor]:
    """The weights as this rank holds them for the forward: whole (ZeRO 0–2) or its ZeRO-3 partition."""
    return {name: getattr(p, "ds_tensor", p).detach().clone() for name, p in engine.module.named_parameters()}


def moments(optimizer) -> list[torch.Tensor]:
    """Copies of every tensor of the optimizer's state (Adam's ``exp_avg``, ``exp_avg_sq``, step counters)."""
    return [value.detach().clone() for state in optimizer.state.values() for value in state.values()
            if torch.is_tensor(value)]


def shut_down() -> None:
    """Leave the process group together, then exit as the launch scripts do (see :func:`exit_process`)."""
    leave_process_group()
    exit_process(0)
