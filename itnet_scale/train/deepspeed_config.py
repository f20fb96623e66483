"""The DeepSpeed JSON, generated from the pretraining config (or the user's own, checked the same way).

Users set ZeRO, offload, precision, batch and clipping in our YAML (:class:`DeepSpeedSettings`) and the
optimizer in :class:`~itnet_scale.train.optimizer.OptimizerSettings`; :func:`build_deepspeed_config` turns the
former into the dict ``deepspeed.initialize(config=...)`` takes. The optimizer and its learning-rate schedule are
passed to ``deepspeed.initialize`` as objects (:mod:`itnet_scale.train.optimizer`), not named in the JSON.

A user's own ``--deepspeed_config FILE`` is still honoured: its keys win over the generated ones
(:func:`resolve_deepspeed_config`). Either way the result is validated by DeepSpeed's own parser
(``deepspeed.runtime.config.DeepSpeedConfig``) before any training starts, so a bad stage or a typo'd key fails
at start-up with DeepSpeed's message and the file that holds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DeepSpeedSettings:
    """ZeRO, offload, precision and batch settings (per rank).

    ``micro_batch_size`` counts samples per rank per forward; the global batch is
    ``micro_batch_size × gradient_accumulation_steps × data-parallel ranks``. ``offload_optimizer`` (ZeRO ≥ 1)
    keeps the fp32 master weights and Adam moments in CPU memory and steps them there with DeepSpeed's CPU Adam
    (:func:`~itnet_scale.train.optimizer.guarded_cpu_adam`); ``offload_param`` (ZeRO-3) keeps the parameters there
    too, gathered to the accelerator layer by layer. ``precision``: ``bf16`` trains in bfloat16 with fp32 master
    weights and optimizer states (DeepSpeed's bf16 mode; the GPU setting), ``fp16`` with dynamic loss scaling,
    ``fp32`` throughout.

    ``bucket_size``: elements per ZeRO gradient-reduction / all-gather bucket (ZeRO-3 prefetches 0.9 of it);
    ``zero3_persistence_threshold``: ZeRO-3 keeps parameters with fewer elements whole on every rank. Unset, they
    follow the model's width ``w`` — ``w²`` and ``10·w``, the convention of DeepSpeed's Hugging Face integration —
    rather than DeepSpeed's fixed defaults (buckets of 5·10⁸ elements: 2 GB per rank for any model, and 10⁵, which
    keeps every tensor of a small model whole).
    """

    zero_stage: int = 0
    precision: str = "fp32"
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    offload_optimizer: bool = False
    offload_param: bool = False
    bucket_size: int | None = None
    zero3_persistence_threshold: int | None = None

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"deepspeed.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("micro_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"deepspeed.{name} must be >= 1, got {getattr(self, name)}")
        if self.gradient_clipping < 0:
            raise ValueError(f"deepspeed.gradient_clipping must be >= 0 (0 = off), got {self.gradient_clipping}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage >= 1")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs zero_stage 3")
        for name in ("bucket_size", "zero3_persistence_threshold"):
            if getattr(self, name) is not None and getattr(self, name) < (1 if name == "bucket_size" else 0):
                raise ValueError(f"deepspeed.{name} must be {'>= 1' if name == 'bucket_size' else '>= 0'} or "
                                 f"unset, got {getattr(self, name)}")


def build_deepspeed_config(settings: DeepSpeedSettings, *, on_cpu: bool,
                           model_width: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict (``on_cpu``: the accelerator is the CPU, so offloaded memory is not pinned;
    ``model_width`` sizes the buckets and ZeRO-3's persistence threshold when the settings leave them unset)."""
    zero: dict[str, Any] = {"stage": settings.zero_stage}
    bucket = settings.bucket_size or (model_width**2 if model_width else None)
    persistence = settings.zero3_persistence_threshold
    if persistence is None and model_width:
        persistence = 10 * model_width
    if bucket is not None and settings.zero_stage in (1, 2):
        zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
    if settings.zero_stage == 3:
        if bucket is not None:
            zero.update(reduce_bucket_size=bucket, stage3_prefetch_bucket_size=int(0.9 * bucket))
        if persistence is not None:
            zero["stage3_param_persistence_threshold"] = persistence
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if settings.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "gradient_clipping": settings.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": settings.precision == "bf16"},
        "fp16": {"enabled": settings.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The optimizer is ours (itnet_scale.train.optimizer, passed to deepspeed.initialize) so a step can be vetoed
        # on every stage; this lets ZeRO wrap it. With offload it is DeepSpeedCPUAdam (a vetoable subclass), which
        # DeepSpeed's own check (zero_force_ds_cpu_optimizer, on by default) requires.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # our logger reports progress; keep DeepSpeed's own prints quiet
        "wall_clock_breakdown": False,
    }


def resolve_deepspeed_config(generated: dict[str, Any], user_file: str | Path | None = None,
                             mpu: Any = None) -> dict[str, Any]:
    """``generated`` with the keys of the user's JSON file on top (theirs win, section by section), validated by
    DeepSpeed's parser (with the ``mpu`` that ``deepspeed.initialize`` will get: sequence-parallel ranks share
    their samples, which the batch sizes count); errors name the file."""
    config = dict(generated)
    origin = "the generated DeepSpeed config"
    if user_file is not None:
        origin = str(user_file)
        try:
            user = json.loads(Path(user_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{user_file}: no such DeepSpeed config") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{user_file}: not valid JSON ({error})") from None
        if not isinstance(user, dict):
            raise ValueError(f"{user_file}: a DeepSpeed config is a JSON object, got {type(user).__name__}")
        for key, value in user.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
    check_deepspeed_config(config, origin, mpu)
    return config


def check_deepspeed_config(config: dict[str, Any], origin: str, mpu: Any = None) -> None:
    """Run DeepSpeed's own config parser on ``config``; its complaint is re-raised naming ``origin``."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(config, mpu=mpu)
    except Exception as error:  # DeepSpeed raises pydantic, assertion and value errors alike
        message = " ".join(str(error).split())
        raise ValueError(f"{origin}: DeepSpeed rejects the config: {message}") from None
