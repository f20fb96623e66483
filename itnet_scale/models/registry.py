"""Models by name and by task.

Names are the model configs shipped with the package, ``itnet_scale/models/configs/*.yaml`` (``tiny``,
``small``, ``base``, ``large``; a checkout also shows them as ``configs/model/``): ``create_model("tiny")`` builds
the pretraining model of ``tiny.yaml``; ``create_model("base", task="classification", classes=1000,
drop_path=0.1)`` a classifier whose config is ``base`` with ``drop_path`` overridden. A YAML path or a
:class:`ModelConfig` works wherever a name does. The configs are package data read with
:mod:`importlib.resources`, so an installed package finds them from any directory.

Tasks are the model classes that register themselves with :func:`register_task` (the class decorator in
:mod:`itnet_scale.models.itnet`); this module imports no model module, and importing :mod:`itnet_scale.models`
registers every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from omegaconf import OmegaConf
from torch import nn

from itnet_scale.config import load_yaml, merge_config
from itnet_scale.models.config import ModelConfig

#: The folder of the registered model configs (package data; a :class:`~importlib.resources.abc.Traversable`).
MODEL_CONFIGS: Traversable = files(__package__) / "configs"
#: The label-count arguments a task model's constructor may take after its config.
LABEL_ARGUMENTS = ("classes", "answers")

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


class TaskModel(NamedTuple):
    """A registered task: its model class and the label-count argument it takes (``classes``, ``answers``) or
    ``None``."""

    model_class: type[nn.Module]
    label_argument: str | None


#: Task name → its model class and label-count argument, filled by :func:`register_task`.
TASKS: dict[str, TaskModel] = {}


def register_task(task: str, *, label_argument: str | None = None) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make the decorated model class ``task``'s model. ``label_argument`` is the label count its
    constructor takes after the config (``classes`` or ``answers``), if any. A task registered twice, or an
    unknown label argument, raises ``ValueError`` naming it."""
    if label_argument is not None and label_argument not in LABEL_ARGUMENTS:
        raise ValueError(f"task {task!r}: label_argument must be one of {list(LABEL_ARGUMENTS)} or None, got "
                         f"{label_argument!r}")

    def register(model_class: ModelClass) -> ModelClass:
        if task in TASKS:
            raise ValueError(f"task {task!r} is already registered to {TASKS[task].model_class.__name__}; cannot "
                             f"register {model_class.__name__}")
        TASKS[task] = TaskModel(model_class, label_argument)
        return model_class

    return register


def list_models() -> list[str]:
    """The registered model names (the ``*.yaml`` files of :data:`MODEL_CONFIGS`), sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in MODEL_CONFIGS.iterdir()
                  if entry.name.endswith(".yaml"))


def load_model_config(name_or_path: str | Path | ModelConfig, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name, a YAML file or a config, with ``overrides`` (config
    fields; nested ones as mappings, e.g. ``layer={"kernel_width": 8}``) merged on top. An unknown name, a
    missing file, an unknown key or a wrong type raises ``ValueError`` naming it."""
    if isinstance(name_or_path, ModelConfig):
        source, where = OmegaConf.structured(name_or_path), "model config"
    elif Path(name_or_path).suffix in (".yaml", ".yml"):
        source, where = load_yaml(name_or_path, "model config"), str(name_or_path)
    else:
        if str(name_or_path) not in list_models():
            raise ValueError(f"unknown model {str(name_or_path)!r}; known: {list_models()} (or a YAML path)")
        with as_file(MODEL_CONFIGS / f"{name_or_path}.yaml") as path:
            source, where = load_yaml(path, "model config"), str(path)
    if overrides:
        where = f"{where} with overrides {sorted(overrides)}"
    return merge_config(ModelConfig, [source, overrides], what="model config", where=where)


def create_model(name_or_config: str | Path | ModelConfig, *, task: str = "pretraining", classes: int | None = None,
                 answers: int | None = None, **overrides: Any) -> nn.Module:
    """Build ``task``'s model — ``backbone`` (:class:`ITNetModel`), ``pretraining``, ``classification``
    (needs ``classes``), ``regression``, ``vqa`` (needs ``answers``) or ``nlvr2`` — from a name, a YAML path or a
    :class:`ModelConfig`, with config ``overrides`` (see :func:`load_model_config`; e.g. ``modalities=["image"]``
    builds the image encoder only)."""
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
