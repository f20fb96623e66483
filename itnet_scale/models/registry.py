"""Models by name: the names are the configs in ``configs/model/`` (``tiny``, ``small``, ``base``, ``large``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from itnet_scale.config import load_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.itnet import ITNetForClassification, ITNetForNLVR2, ITNetForPretraining, ITNetForVQA, ITNetModel

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
TASKS = {"backbone": ITNetModel, "pretraining": ITNetForPretraining, "classification": ITNetForClassification,
         "vqa": ITNetForVQA, "nlvr2": ITNetForNLVR2}


def list_models() -> list[str]:
    """The model names (config files in ``configs/model``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def model_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name or a YAML path, with ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in list_models():
            raise ValueError(f"unknown model {str(name_or_path)!r}; known: {list_models()} (or give a YAML path)")
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    return load_config(ModelConfig, path, overrides, what="model config")


def create_model(name_or_config: str | Path | ModelConfig, task: str = "pretraining",
                 overrides: list[str] | tuple[str, ...] = (), **task_args: Any) -> nn.Module:
    """Build ``task``'s model (``backbone``, ``pretraining``, ``classification(classes=…)``, ``vqa(answers=…)``,
    ``nlvr2``) from a name, a YAML path or a :class:`ModelConfig`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    config = name_or_config if isinstance(name_or_config, ModelConfig) else model_config(name_or_config, overrides)
    return TASKS[task](config, **task_args)
