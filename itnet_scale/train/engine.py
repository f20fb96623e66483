"""The DeepSpeed engine of a model: our optimizer and schedule, the generated (and checked) DeepSpeed config.

:func:`build_engine` is the one place a model is wrapped by ``deepspeed.initialize`` — the pretraining loop and the
training benchmarks use it alike. It also removes ZeRO-3's second fp32 copy of the weights in fp32 training
(:func:`share_fp32_master_weights`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itnet_scale.train.deepspeed_config import DeepSpeedSettings, build_deepspeed_config, resolve_deepspeed_config
from itnet_scale.train.optimizer import OptimizerSettings, build_lr_schedule, build_optimizer

logger = logging.getLogger(__name__)


def build_engine(model: nn.Module, deepspeed: DeepSpeedSettings, optimizer: OptimizerSettings, total_steps: int, *,
                 model_width: int | None = None, deepspeed_config_file: str | Path | None = None,
                 sequence_parallel: Any = None, zero_overrides: dict[str, Any] | None = None,
                 ) -> tuple[Any, torch.optim.Optimizer]:
    """``(engine, optimizer)``: ``model`` under ``deepspeed.initialize`` with the vetoable AdamW
    (:func:`~itnet_scale.train.optimizer.build_optimizer`: DeepSpeed's CPU Adam when the final config offloads the
    optimizer states, else :class:`~itnet_scale.train.optimizer.GuardedAdamW`) and the warm-up + cosine schedule
    over ``total_steps``.

    The DeepSpeed config is generated from ``deepspeed`` (``model_width`` sizes ZeRO's buckets), with the user's
    ``deepspeed_config_file`` and then ``zero_overrides`` (``zero_optimization`` keys) on top, checked by DeepSpeed's
    parser; ``sequence_parallel`` (:class:`~itnet_scale.parallel.SequenceParallel`) adds its mpu and settings.
    """
    # Imported when an engine is built, not with this module: DeepSpeed's import costs seconds and announces its
    # accelerator on stdout, and the config checks and the benchmarks' reports import this module without needing it.
    import deepspeed as ds

    generated = build_deepspeed_config(deepspeed, on_cpu=not torch.cuda.is_available(), model_width=model_width)
    if zero_overrides:
        generated["zero_optimization"].update(zero_overrides)
    mpu = None if sequence_parallel is None else sequence_parallel.mpu
    config = resolve_deepspeed_config(generated, deepspeed_config_file, mpu=mpu)
    if sequence_parallel is not None:
        config = sequence_parallel.deepspeed_config(config)
    if config["train_micro_batch_size_per_gpu"] != deepspeed.micro_batch_size:
        raise ValueError(f"{deepspeed_config_file}: train_micro_batch_size_per_gpu="
                         f"{config['train_micro_batch_size_per_gpu']} differs from deepspeed.micro_batch_size="
                         f"{deepspeed.micro_batch_size}; the data is read by the latter, so set it there")
    adamw = build_optimizer(model, optimizer, offload=offloads_optimizer(config))
    schedule = build_lr_schedule(adamw, optimizer, total_steps)
    engine, *_ = ds.initialize(model=model, optimizer=adamw, lr_scheduler=schedule, config=config, mpu=mpu)
    share_fp32_master_weights(engine)
    return engine, adamw


def offloads_optimizer(config: dict[str, Any]) -> bool:
    """Whether a DeepSpeed config keeps the optimizer states off the accelerator (``offload_optimizer`` to ``cpu``
    or ``nvme``: DeepSpeed then steps them on the CPU)."""
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def share_fp32_master_weights(engine: Any) -> int:
    """At ZeRO-3, make each partition's fp32 master copy the partition itself when the weights are fp32 already;
    returns how many copies were dropped.

    DeepSpeed means to do this itself (``_create_fp32_partitions`` aliases the two when dtype and device agree, the
    path it takes under torch autocast), but it compares a ``torch.device`` with the device's *name*, which is never
    equal, so fp32 training keeps a needless second copy: 20 instead of 16 bytes of state per parameter, spread over
    the ranks. The aliasing is that same path: the update lands in the partition, and DeepSpeed's copy back from the
    master becomes a copy onto itself. The inner optimizer's state (made at initialization) moves to the alias.
    """
    optimizer = getattr(engine, "optimizer", None)
    low = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    offloaded = getattr(optimizer, "offload_optimizer", False)
    if engine.zero_optimization_stage() != 3 or low is None or masters is None or offloaded:
        return 0
    inner = optimizer.optimizer
    shared = 0
    for i, (partition, master) in enumerate(zip(low, masters)):
        if partition is None or partition is master or partition.dtype != master.dtype \
                or partition.device != master.device:
            continue
        with torch.no_grad():
            partition.copy_(master)  # equal already; the master is what the optimizer steps, so keep its values
        for attribute in ("ds_id",):
            if hasattr(master, attribute):
                setattr(partition, attribute, getattr(master, attribute))
        if master in inner.state:
            inner.state[partition] = inner.state.pop(master)
        masters[i] = partition
        shared += 1
    if shared:
        logger.info("ZeRO-3: %d fp32 master partition(s) now alias the fp32 weight partitions", shared)
    return shared
