"""The registry: every shipped model config (package data, shown as configs/model in a checkout) builds (tiny for
real, the others on the meta device) with a parameter count in its expected range; the task models register
themselves; unknown names, keys, types and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from itnet_scale.models import (
    ITNetForClassification,
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForRegression,
    ITNetForVQA,
    ITNetModel,
    ModelConfig,
    create_model,
    list_models,
    load_model_config,
)
from itnet_scale.models.registry import MODEL_CONFIGS, TASKS, register_task

EXPECTED_BACKBONE = {"tiny": (1e6, 4e6), "small": (10e6, 20e6), "base": (85e6, 110e6), "large": (280e6, 360e6),
                     "1b": (0.95e9, 1.1e9), "7b": (6.4e9, 6.8e9)}
EXPECTED_TOTAL = {"tiny": (2e6, 5e6), "small": (20e6, 40e6), "base": (100e6, 140e6), "large": (300e6, 420e6),
                  "1b": (1.0e9, 1.2e9), "7b": (6.6e9, 6.9e9)}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


REPO = Path(__file__).resolve().parents[2]


def test_the_registered_names_are_the_config_files_of_the_package():
    assert list_models() == ["1b", "7b", "base", "large", "small", "tiny"]
    assert sorted(entry.name for entry in MODEL_CONFIGS.iterdir()) == [f"{name}.yaml" for name in list_models()]
    package_folder = Path(str(MODEL_CONFIGS))
    assert package_folder == REPO / "itnet_scale" / "models" / "configs"
    # one copy of each config: the checkout's configs/model is a relative link to the package's folder
    link = REPO / "configs" / "model"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == package_folder.resolve()
    assert load_model_config(link / "tiny.yaml") == load_model_config("tiny")


def test_the_task_models_register_themselves():
    assert dict(TASKS) == {"backbone": (ITNetModel, None), "pretraining": (ITNetForPretraining, None),
                           "classification": (ITNetForClassification, "classes"),
                           "regression": (ITNetForRegression, None), "vqa": (ITNetForVQA, "answers"),
                           "nlvr2": (ITNetForNLVR2, None)}
    assert TASKS["vqa"].model_class is ITNetForVQA and TASKS["vqa"].label_argument == "answers"


def test_registering_a_task_twice_or_with_an_unknown_label_argument_is_refused():
    class Segmenter(nn.Module):
        pass

    with pytest.raises(ValueError, match=r"task 'vqa' is already registered to ITNetForVQA; cannot register "
                                         r"Segmenter"):
        register_task("vqa")(Segmenter)
    with pytest.raises(ValueError, match=r"task 'segmentation': label_argument must be one of \['classes', "
                                         r"'answers'\] or None, got 'masks'"):
        register_task("segmentation", label_argument="masks")
    assert TASKS["vqa"].model_class is ITNetForVQA and "segmentation" not in TASKS


@pytest.mark.parametrize("name", ["small", "base", "large", "1b", "7b"])
def test_cluster_sizes_build_on_the_meta_device(name):
    with torch.device("meta"):
        model = create_model(name)
    assert all(p.is_meta for p in model.parameters())
    low, high = EXPECTED_BACKBONE[name]
    assert low <= count(model.itnet.backbone) <= high
    low, high = EXPECTED_TOTAL[name]
    assert low <= count(model) <= high
    config = model.itnet.config
    assert (config.dim, config.depth, config.heads) == {"small": (384, 8, 6), "base": (768, 12, 12),
                                                        "large": (1024, 24, 16), "1b": (2048, 20, 16),
                                                        "7b": (4096, 32, 32)}[name]
    supports = [block.mixer.spec.support for block in model.itnet.backbone.blocks]
    assert supports[0] == "window" and supports[-1] == "all"


@pytest.mark.parametrize(("name", "exact", "lowrank"), [("large", 16, 8), ("1b", 15, 5), ("7b", 24, 8)])
def test_large_configs_integrate_their_top_layers_in_low_rank(name, exact, lowrank):
    with torch.device("meta"):
        model = create_model(name, task="backbone")
    assert [block.mixer.integrator.name for block in model.backbone.blocks] == ["exact"] * exact + ["lowrank"] * lowrank


def test_tiny_builds_for_real_and_runs(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")  # tiny inputs: eager tiles (compiling costs seconds)
    model = create_model("tiny")
    low, high = EXPECTED_TOTAL["tiny"]
    assert low <= count(model) <= high
    assert [b.mixer.spec.support for b in model.itnet.backbone.blocks] == ["window", "window", "all", "all"]
    assert [b.mixer.kernel.width for b in model.itnet.backbone.blocks] == [8] * 4
    with torch.no_grad():
        output = model.itnet({"images": torch.rand(2, 1, 32, 32), "text_ids": torch.randint(7, 3000, (2, 12))})
    assert output.hidden.shape == (2, 64 + 12, 192) and torch.isfinite(output.hidden).all()


def test_overrides_and_paths(tmp_path):
    assert load_model_config("tiny", depth=2).depth == 2
    config = load_model_config("tiny", layer={"kernel_width": 2}, layers={"2-3": {"integrator": "lowrank"}})
    assert config.layer.kernel_width == 2 and config.layer.support == "all"
    assert set(config.layers) == {"0-1", "2-3"}  # merged onto the file's overrides
    path = tmp_path / "mine.yaml"
    path.write_text("dim: 64\ndepth: 2\nheads: 4\nlayers:\n  1:\n    support_size: 3\n    support: radius\n")
    mine = load_model_config(path)
    assert (mine.dim, mine.depth) == (64, 2)
    assert mine.layer_overrides() == {"1": {"support_size": 3.0, "support": "radius"}}  # an unquoted index works
    model = create_model(path, task="classification", classes=3, vocab_size=100)
    assert isinstance(model, ITNetForClassification) and model.head.fc.out_features == 3
    assert model.itnet.encoder.text.embedding.num_embeddings == 100
    assert create_model(mine, dim=32, task="backbone").config.dim == 32  # a ModelConfig takes overrides too
    path.write_text("dim: 64\ndepth: 2\nheads: 4\nmodalities: [points]\ntext_segments: 2\n")
    points_only = create_model(path, task="classification", classes=40)  # ModelNet40
    assert points_only.itnet.config.modalities == ["points"] and points_only.itnet.encoder.text is None


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'huge'; known: \['1b', '7b', 'base', 'large', 'small', "
                                         r"'tiny'\]"):
        create_model("huge")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: no such model config"):
        create_model(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"tiny\.yaml with overrides \['widht'\]: bad model config key 'widht'"):
        load_model_config("tiny", widht=3)
    with pytest.raises(ValueError, match=r"bad model config key 'depth'"):
        load_model_config("tiny", depth="four")
    with pytest.raises(ValueError, match=r"dim=190 must be divisible by heads=4"):
        load_model_config("tiny", dim=190)
    with pytest.raises(ValueError, match=r"layers\['3'\]: bad layer config key 'kernel_widht'"):
        load_model_config("tiny", layers={"3": {"kernel_widht": 2}})
    with pytest.raises(ValueError, match=r"layers\['1'\]: bad layer config key 'kernel_width'"):
        load_model_config("tiny", layers={"1": {"kernel_width": "wide"}})
    with pytest.raises(ValueError, match=r"layers: key '2-9' names layers outside 0\.\.3"):
        load_model_config("tiny", layers={"2-9": {"kernel_width": 2}})
    with pytest.raises(ValueError, match=r"layer: bad layer config key 'suport'"):
        ModelConfig(layer={"suport": "window"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("dim: 64\nheads: [4]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: bad model config key 'heads'"):
        load_model_config(bad)
    with pytest.raises(ValueError, match=r"modalities: unknown \['audio'\]; choose from \['image', 'text', "
                                         r"'points'\]"):
        load_model_config("tiny", modalities=["audio"])
    with pytest.raises(ValueError, match=r"modalities must name at least one of .* got \[\]"):
        load_model_config("tiny", modalities=[])
    with pytest.raises(ValueError, match=r"text_segments must be >= 1, got 0"):
        load_model_config("tiny", text_segments=0)
    with pytest.raises(ValueError, match=r"unknown task 'segmentation'"):
        create_model("tiny", task="segmentation")
    with pytest.raises(ValueError, match=r"task 'classification' needs classes=<count>"):
        create_model("tiny", task="classification")
    with pytest.raises(ValueError, match=r"task 'pretraining' takes no answers \(given 5\)"):
        create_model("tiny", answers=5)
