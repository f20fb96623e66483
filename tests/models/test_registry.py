"""The registry: every config builds, with parameter counts in the expected range; bad names/keys are named."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.models import create_model, list_models, model_config


def test_every_size_builds_with_a_plausible_size():
    assert list_models() == ["base", "large", "small", "tiny"]
    expected = {"tiny": (1e6, 8e6), "small": (15e6, 60e6), "base": (80e6, 160e6), "large": (250e6, 500e6)}
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        count = sum(p.numel() for p in model.parameters())
        low, high = expected[name]
        assert low <= count <= high, (name, count)
    tiny = create_model("tiny")
    assert [b.mixer.spec.support for b in tiny.itnet.backbone.blocks] == ["window", "window", "all", "all"]


def test_overrides_paths_and_errors(tmp_path):
    assert model_config("tiny", ["depth=2"]).depth == 2
    path = tmp_path / "mine.yaml"
    path.write_text("dim: 64\ndepth: 2\nheads: 4\n")
    assert model_config(path).dim == 64
    with pytest.raises(ValueError, match=r"unknown model 'huge'; known: \['base', 'large', 'small', 'tiny'\]"):
        create_model("huge")
    with pytest.raises(ValueError, match=r"bad model config key 'widht'"):
        model_config("tiny", ["widht=3"])
    with pytest.raises(ValueError, match=r"bad model config key 'depth'"):
        model_config("tiny", ["depth=four"])
    with pytest.raises(ValueError, match=r"dim=190 must be divisible by heads=4"):
        model_config("tiny", ["dim=190"])
    with pytest.raises(ValueError, match=r"layers\[3\]: bad layers\[3\] config key 'kernel_widht'"):
        model_config("tiny", ["layers.3.kernel_widht=2"])
    with pytest.raises(ValueError, match=r"unknown task 'segmentation'"):
        create_model("tiny", task="segmentation")
