"""Models by name: the names are the configs in ``configs/model/`` (``tiny``, ``small``, ``base``, ``large``).

``create_model("tiny")`` builds the pretraining model of ``configs/model/tiny.yaml``;
``create_model("base", task="classification", classes=1000, drop_path=0.1)`` a classifier whose config is
``base`` with ``drop_path`` overridden. A YAML path or a :class:`ModelConfig` works wherever a name does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from itnet_scale.config import load_yaml, merge_config
from itnet_scale.models.config import ModelConfig
from itnet_scale.models.itnet import ITNetForClassification, ITNetForNLVR2, ITNetForPretraining, ITNetForVQA, ITNetModel

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
#: Task name → (model class, the label-count argument it needs, if any).
TASKS: dict[str, tuple[type[nn.Module], str | None]] = {
    "backbone": (ITNetModel, None),
    "pretraining": (ITNetForPretraining, None),
    "classification": (ITNetForClassification, "classes"),
    "vqa": (ITNetForVQA, "answers"),
    "nlvr2": (ITNetForNLVR2, None),
}


def list_models() -> list[str]:
    """The registered model names (the ``*.yaml`` files of ``configs/model``), sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def load_model_config(name_or_path: str | Path | ModelConfig, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name, a YAML file or a config, with ``overrides`` (config
    fields; nested ones as mappings, e.g. ``layer={"kernel_width": 8}``) merged on top. An unknown name, a
    missing file, an unknown key or a wrong type raises ``ValueError`` naming it."""
    if isinstance(name_or_path, ModelConfig):
        source, where = OmegaConf.structured(name_or_path), "model config"
    else:
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            if str(name_or_path) not in list_models():
                raise ValueError(f"unknown model {str(name_or_path)!r}; known: {list_models()} (or a YAML path)")
            path = CONFIG_DIR / f"{name_or_path}.yaml"
        source, where = load_yaml(path, "model config"), str(path)
    if overrides:
        where = f"{where} with overrides {sorted(overrides)}"
    return merge_config(ModelConfig, [source, overrides], what="model config", where=where)


def create_model(name_or_config: str | Path | ModelConfig, *, task: str = "pretraining", classes: int | None = None,
                 answers: int | None = None, **overrides: Any) -> nn.Module:
    """Build ``task``'s model — ``backbone`` (:class:`ITNetModel`), ``pretraining``, ``classification``
    (needs ``classes``), ``vqa`` (needs ``answers``) or ``nlvr2`` — from a name, a YAML path or a
    :class:`ModelConfig`, with config ``overrides`` (see :func:`load_model_config`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    model_class, needed = TASKS[task]
    counts: Mapping[str, int | None] = {"classes": classes, "answers": answers}
    for name, value in counts.items():
        if name == needed and value is None:
            raise ValueError(f"task {task!r} needs {name}=<count>")
        if name != needed and value is not None:
            raise ValueError(f"task {task!r} takes no {name} (given {value})")
    config = load_model_config(name_or_config, **overrides)
    return model_class(config) if needed is None else model_class(config, counts[needed])
