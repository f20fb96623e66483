"""ModelConfig's layers: flat YAML keys → typed transform settings, per-layer overrides, errors naming the layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from itnet_scale.models import LayerConfig, ModelConfig, create_model, load_model_config
from itnet_scale.models.config import layer_range
from itnet_scale.nn import KernelConfig, TransformConfig
from itnet_scale.ops import INTEGRATORS, Exact, LowRank, MonteCarlo


def small(**overrides) -> ModelConfig:
    return ModelConfig(dim=16, heads=2, **{"depth": 5, **overrides})


def test_flat_keys_become_typed_settings():
    layer = LayerConfig(kernel_width=4, kernel_depth=2, kernel_activation="gelu", mode="linear", support="causal",
                        decay=True, offset_range=3, rank=8, feature_map="prf", integrator="montecarlo", samples=32,
                        proposal="window", proposal_window=5, sample_block=16, backend="reference", head_dim=4,
                        value_dim=6, bias=False, chunk_size=9)
    assert layer.transform() == TransformConfig(
        KernelConfig(mode="linear", support="causal", width=4, depth=2, activation="gelu", offset_range=3,
                     decay=True, rank=8, feature_map="prf"),
        MonteCarlo(samples=32, proposal="window", proposal_window=5, sample_block=16, backend="reference"),
        head_dim=4, value_dim=6, bias=False)  # chunk_size: a lowrank setting, ignored by montecarlo
    assert LayerConfig(integrator="lowrank", chunk_size=9).transform().integrator == LowRank(chunk_size=9)


def test_the_flat_defaults_are_the_typed_defaults():
    """One set of defaults: a default LayerConfig is a default TransformConfig, and every integrator setting has a
    flat key of the same name and default."""
    assert LayerConfig().transform() == TransformConfig()
    flat = {f.name: f.default for f in dataclasses.fields(LayerConfig)}
    for cls in INTEGRATORS.values():
        for f in dataclasses.fields(cls):
            if f.name != "block_size":  # a kernel-tuning knob, not a model setting
                assert flat[f.name] == f.default, (cls.name, f.name)


def test_overrides_land_on_the_named_layers_in_order():
    config = small(layer={"kernel_width": 4}, layers={"0-1": {"support": "window", "support_size": 2.0},
                                                      4: {"integrator": "lowrank", "rank": 8},
                                                      "1": {"support": "radius", "support_size": 3.0,
                                                            "kernel_width": 0}})
    transforms = config.transforms()
    assert [t.kernel.support for t in transforms] == ["window", "radius", "all", "all", "all"]  # "1" is later: wins
    assert [t.kernel.support_size for t in transforms[:2]] == [2.0, 3.0]
    assert [t.kernel.width for t in transforms] == [4, 0, 4, 4, 4]
    assert [t.integrator for t in transforms] == [Exact()] * 4 + [LowRank()]
    model = create_model(config, task="backbone")
    mixers = [block.mixer for block in model.backbone.blocks]
    assert [m.kernel for m in mixers] == [t.kernel for t in transforms]
    assert mixers[4].features.rank == 8 and mixers[3].features is None
    causal = small(depth=2, layer={"support": "causal"}, layers={"1": {"decay": True}})  # merged, then checked
    assert [t.kernel.decay for t in causal.transforms()] == [False, True]


def test_layer_keys_and_ranges():
    assert list(layer_range("3", 4)) == [3] and list(layer_range(1, 4)) == [1]
    assert list(layer_range(" 0-2", 4)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"layers: key 'first' must be a layer index or an inclusive range"):
        layer_range("first", 4)
    with pytest.raises(ValueError, match=r"layers: key '2-5' names layers outside 0\.\.3 \(depth=4\)"):
        small(depth=4, layers={"2-5": {"kernel_width": 2}})
    with pytest.raises(ValueError, match=r"layers: key '3-1' names layers outside"):
        layer_range("3-1", 4)


def test_bad_settings_name_the_key_and_the_layer():
    with pytest.raises(ValueError, match=r"layers\['2-3'\]: bad layer config key 'kernel_widht'.*'kernel_width'"):
        small(layers={"2-3": {"kernel_widht": 3}})
    with pytest.raises(ValueError, match=r"^layer: bad layer config key 'suport'"):
        small(layer={"suport": "window"})
    with pytest.raises(ValueError, match=r"layer 1: support must be one of .* got 'diagonal'"):
        small(depth=2, layers={"1": {"support": "diagonal"}})
    with pytest.raises(ValueError, match=r"layer 1: decay=True needs a causal support"):
        small(depth=2, layers={"1": {"decay": True}})
    with pytest.raises(ValueError, match=r"layer 1: the lowrank integrator integrates support 'all' or 'causal'"):
        small(depth=2, layers={"1": {"integrator": "lowrank", "support": "window", "support_size": 2.0}})
    with pytest.raises(ValueError, match=r"layer 0: integrator must be one of \('exact', 'lowrank', 'montecarlo'\)"):
        small(layer={"integrator": "quadrature"})


def test_old_backend_names_fail_naming_the_new_one(tmp_path):
    """A config of an earlier release that names the tiled backend says what it is called now."""
    path = tmp_path / "old.yaml"
    path.write_text("dim: 16\ndepth: 2\nheads: 2\nlayer:\n  backend: tiled\n")
    with pytest.raises(ValueError, match=r"old\.yaml: layer 0: backend='tiled' is now called 'torch'"):
        load_model_config(path)
    path.write_text("dim: 16\ndepth: 2\nheads: 2\nlayer:\n  backend: torch\n  kernel_width: 4\n")
    model = create_model(path, task="backbone")
    assert all(block.mixer.integrator == Exact("torch") for block in model.backbone.blocks)
    with torch.no_grad():
        assert model({"text_ids": torch.randint(1, 100, (1, 5))}).hidden.shape == (1, 5, 16)
