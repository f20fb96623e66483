"""The one config loader: YAML + overrides onto structured dataclasses, errors that name the key and origin."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from itnet_scale.config import load_config, merge_config, to_yaml


@dataclass
class Inner:
    width: int = 4
    name: str = "relu"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"inner.width must be >= 1, got {self.width}")


@dataclass
class Outer:
    root: str = "data"
    path: str = "${root}/text"
    rate: float = 0.5
    inner: Inner = field(default_factory=Inner)
    names: list[str] = field(default_factory=list)


def test_file_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "outer.yaml"
    path.write_text("root: /shards\ninner:\n  width: 8\nnames: [a, b]\n")
    config = load_config(Outer, path, ["inner.name=gelu", "rate=2"])
    assert isinstance(config, Outer) and isinstance(config.inner, Inner)
    assert (config.root, config.path, config.rate) == ("/shards", "/shards/text", 2.0)
    assert (config.inner.width, config.inner.name, config.names) == (8, "gelu", ["a", "b"])
    assert load_config(Outer) == Outer(path="data/text")


def test_yaml_round_trip(tmp_path):
    config = Outer(root="r", path="p", rate=0.25, inner=Inner(3, "tanh"), names=["x"])
    (tmp_path / "saved.yaml").write_text(to_yaml(config))
    assert load_config(Outer, tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("inner:\n  depth: 3\n", [], r"outer\.yaml: bad outer config key 'inner\.depth'"),
        ("rate: fast\n", [], r"outer\.yaml: bad outer config key 'rate'"),
        ("inner:\n  width: 0\n", [], r"outer\.yaml: inner\.width must be >= 1, got 0"),
        ("", ["inner.width=-2"], r"with overrides \['inner\.width=-2'\]: inner\.width must be >= 1"),
        ("", ["inner.width"], r"override 'inner\.width': expected key=value"),
        ("", ["colour=red"], r"override 'colour=red': bad outer config key 'colour'"),
        ("- a\n- b\n", [], r"outer\.yaml: expected a mapping of outer config settings, got a ListConfig"),
        ("a: [1,\n", [], r"outer\.yaml: not valid YAML"),
    ],
)
def test_errors_name_the_key_and_origin(tmp_path, text, overrides, message):
    path = tmp_path / "outer.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(Outer, path, overrides, what="outer config")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.yaml: no such outer config"):
        load_config(Outer, tmp_path / "absent.yaml", what="outer config")


def test_merge_config_takes_mappings_and_names_non_mappings():
    config = merge_config(Outer, [{"rate": 1.5}, OmegaConf.create({"inner": {"name": "sin"}})])
    assert (config.rate, config.inner.name) == (1.5, "sin")
    with pytest.raises(ValueError, match=r"expected a mapping of config settings, got a list"):
        merge_config(Outer, [["rate", 1]])
