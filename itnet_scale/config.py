"""Loading configs: YAML files + ``key=value`` overrides, checked against omegaconf structured dataclasses.

Every config in the project (tokenizer, model, data, pretraining) is a dataclass whose ``__post_init__``
checks its values; :func:`load_config` is the one way to read one. Unknown keys, wrong types and bad values
raise ``ValueError`` naming the key and where it came from (the file, or the override), before anything runs.
Nothing in a config is ever executed: omegaconf only parses YAML, and interpolations (``${data_root}``) are
plain string substitution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def merge_config(schema: type[T], sources: Sequence[Any], overrides: Sequence[str] = (), *,
                 what: str = "config", where: str = "") -> T:
    """Merge ``sources`` (mappings or DictConfigs, in order) and ``key=value`` ``overrides`` onto ``schema``
    and return the dataclass instance (its ``__post_init__`` checks run on the merged values).

    ``what`` names the config in errors (``"tokenizer config"``); ``where`` names its origin (a file).
    """
    merged = OmegaConf.structured(schema)
    origin = where or what
    try:
        for source in sources:
            if not isinstance(source, DictConfig | dict):
                raise ValueError(f"expected a mapping of {what} settings, got a {type(source).__name__}")
            merged = OmegaConf.merge(merged, source)
        for override in overrides:
            origin = f"override {override!r}"
            if "=" not in override:
                raise ValueError("expected key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        origin = f"{where or what}{f' with overrides {list(overrides)}' if overrides else ''}"
        config = OmegaConf.to_object(merged)  # runs the dataclasses' __post_init__ on the merged values
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        named = f" key {key!r}" if key else ""
        raise ValueError(f"{origin}: bad {what}{named}: {str(error).splitlines()[0]}") from None
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None
    assert isinstance(config, schema)
    return config


def load_yaml(path: str | Path, what: str = "config") -> DictConfig:
    """Read a YAML mapping; a missing file, invalid YAML or a non-mapping raises naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"{path}: expected a mapping of {what} settings, got a {type(loaded).__name__}")
    return loaded


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), *,
                what: str = "config") -> T:
    """Load ``schema`` from the YAML file ``path`` (or its defaults when ``None``) and ``key=value`` overrides
    (omegaconf dot-list syntax: ``vocab_size=8000``, ``inputs=[a.txt,b.txt]``)."""
    sources = [load_yaml(path, what)] if path is not None else []
    return merge_config(schema, sources, overrides, what=what, where=str(path) if path is not None else "")


def to_yaml(config: Any) -> str:
    """The YAML text of a config dataclass (what is saved next to checkpoints and tokenizers)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
