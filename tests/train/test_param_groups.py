"""The optimizer's parameter groups: layers of a real ITNet model, the learning-rate scales, the weight-decay rule,
the plain grouping when layer decay is off, and the schedule keeping each group's scale. Under DeepSpeed ZeRO-3:
tests/train/test_ema.py's 2-rank run."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.models.registry import create_model
from itnet_scale.train.optimizer import OptimizerSettings, build_lr_schedule, build_optimizer, lr_factor
from itnet_scale.train.param_groups import (
    ParameterLayer,
    applies_weight_decay,
    base_learning_rate,
    parameter_groups,
    parameter_layers,
)


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return create_model("tiny", task="classification", classes=10)


def group_of(groups: list[dict], parameter: torch.Tensor) -> dict:
    (group,) = [g for g in groups if any(p is parameter for p in g["params"])]
    return group


def test_layers_of_the_tiny_classifier(classifier) -> None:
    layers, depth = parameter_layers(classifier)
    assert depth == 4 and layers.keys() == dict(classifier.named_parameters()).keys()
    assert layers["itnet.encoder.text.embedding.weight"] == ParameterLayer(0, head=False)
    assert layers["itnet.encoder.image.stem.weight"] == ParameterLayer(0, head=False)
    assert layers["itnet.encoder.points.mask_token"] == ParameterLayer(0, head=False)
    assert layers["itnet.backbone.blocks.0.mixer.q_proj.weight"] == ParameterLayer(1, head=False)
    assert layers["itnet.backbone.blocks.3.mlp.fc2.bias"] == ParameterLayer(4, head=False)
    assert layers["itnet.backbone.norm.weight"] == ParameterLayer(5, head=False)
    assert layers["head.fc.weight"] == layers["head.norm.bias"] == ParameterLayer(5, head=True)
    assert {layer.layer for layer in layers.values()} == set(range(6))
    assert {name for name, layer in layers.items() if layer.head} == {"head.norm.weight", "head.norm.bias",
                                                                    "head.fc.weight", "head.fc.bias"}


def test_tied_decoder_is_the_embedding_and_pretraining_heads_are_heads() -> None:
    model = create_model("tiny", task="pretraining")
    layers, depth = parameter_layers(model)
    assert "mlm.decoder.weight" not in layers  # tied to the token embedding: one parameter, the trunk's
    assert layers["itnet.encoder.text.embedding.weight"].layer == 0
    assert all(layers[name].head and layers[name].layer == depth + 1 for name in layers
               if name.split(".")[0] in ("mlm", "itc", "mpm", "mpp"))
    backbone = create_model("tiny", task="backbone")  # the trunk itself: no head
    assert not any(layer.head for layer in parameter_layers(backbone)[0].values())


def test_scales_and_weight_decay_by_layer(classifier) -> None:
    decay, multiplier = 0.5, 10.0
    groups = parameter_groups(classifier, 0.05, layer_decay=decay, head_lr_multiplier=multiplier)
    parameters = dict(classifier.named_parameters())
    layers, depth = parameter_layers(classifier)
    for name, parameter in parameters.items():
        group = group_of(groups, parameter)
        expected = decay ** (depth + 1 - layers[name].layer) * (multiplier if layers[name].head else 1.0)
        assert group["lr_scale"] == pytest.approx(expected), name
        assert group["weight_decay"] == (0.05 if parameter.ndim >= 2 else 0.0), name
    assert group_of(groups, parameters["itnet.encoder.image.stem.weight"])["lr_scale"] == pytest.approx(1 / 32)
    assert group_of(groups, parameters["head.fc.weight"])["lr_scale"] == pytest.approx(10.0)
    assert group_of(groups, parameters["itnet.backbone.norm.bias"])["lr_scale"] == 1.0
    # one group per (scale, decayed): 6 layers × 2, the head's 2 on top; decayed groups first, the top layer first
    assert len(groups) == 13 and sum(len(g["params"]) for g in groups) == len(parameters)
    assert [g["weight_decay"] for g in groups] == [0.05] * 6 + [0.0] * 7
    assert [g["lr_scale"] for g in groups[:6]] == pytest.approx([10.0, 0.5, 0.25, 0.125, 0.0625, 0.03125])
    assert [g["lr_scale"] for g in groups[6:]] == pytest.approx([1.0, 10.0, 0.5, 0.25, 0.125, 0.0625, 0.03125])
    # equal scales share a group: without the multiplier the head joins the top layer
    assert len(parameter_groups(classifier, 0.05, layer_decay=0.5)) == 12


def test_off_is_the_plain_two_groups(classifier) -> None:
    """layer_decay = head_lr_multiplier = 1: matrices with weight decay, everything else without, in model order —
    the grouping without layer decay, on any model."""
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    for groups in (parameter_groups(classifier, 0.05),
                   build_optimizer(classifier, OptimizerSettings(weight_decay=0.05)).param_groups):
        assert len(groups) == 2
        assert groups[0]["params"] == [p for p in trainable if p.ndim >= 2]
        assert groups[1]["params"] == [p for p in trainable if p.ndim < 2]
        assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and [g["lr_scale"] for g in groups] == [1.0, 1.0]
    assert applies_weight_decay(torch.zeros(3, 3)) and not applies_weight_decay(torch.zeros(3))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    plain[1].weight.requires_grad_(False)  # frozen: in no group
    groups = parameter_groups(plain, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 2]
    # no weight decay at all still keeps the two groups apart
    assert len(parameter_groups(plain, 0.0)) == 2


def test_schedule_applies_each_groups_scale(classifier) -> None:
    settings = OptimizerSettings(lr=1e-3, warmup_steps=3, min_lr_ratio=0.1, layer_decay=0.7, head_lr_multiplier=5.0)
    optimizer = build_optimizer(classifier, settings)
    schedule = build_lr_schedule(optimizer, settings, total_steps=10)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert len(set(scales)) == 7 and max(scales) == pytest.approx(5.0) and min(scales) == pytest.approx(0.7**5)
    for step in range(10):
        factor = lr_factor(step, 3, 10, 0.1)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(1e-3 * factor * group["lr_scale"], rel=1e-12)
        assert base_learning_rate(optimizer) == pytest.approx(1e-3 * factor, rel=1e-12)
        optimizer.step()
        schedule.step()
    # a first Adam step moves a weight by lr · sign(gradient) (before weight decay): each group by its own rate
    optimizer = build_optimizer(classifier, settings)
    build_lr_schedule(optimizer, settings, total_steps=10)
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    images = torch.randn(3, 1, 16, 16)
    classifier.loss({"images": images, "labels": torch.tensor([1, 2, 3])}).backward()
    optimizer.step()
    parameters = dict(classifier.named_parameters())
    for name in ("head.fc.weight", "itnet.backbone.blocks.2.mlp.fc1.weight", "itnet.encoder.image.stem.weight"):
        group = group_of(optimizer.param_groups, parameters[name])
        decayed = before[name] * (1 - group["lr"] * group["weight_decay"])
        step = (parameters[name].detach() - decayed).abs().max()
        assert float(step) == pytest.approx(group["lr"], rel=1e-3), name


def test_bad_settings_are_refused_by_name(classifier) -> None:
    with pytest.raises(ValueError, match=r"optimizer.layer_decay must be in \(0, 1\] \(1 = off\), got 1.5"):
        OptimizerSettings(layer_decay=1.5)
    with pytest.raises(ValueError, match=r"optimizer.layer_decay must be in \(0, 1\]"):
        OptimizerSettings(layer_decay=0.0)
    with pytest.raises(ValueError, match=r"optimizer.head_lr_multiplier must be > 0 \(1 = off\), got -1"):
        OptimizerSettings(head_lr_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        parameter_groups(classifier, 0.05, layer_decay=2.0)
    with pytest.raises(ValueError, match=r"head_lr_multiplier must be > 0"):
        parameter_groups(classifier, 0.05, head_lr_multiplier=0.0)
    with pytest.raises(ValueError, match=r"needs a model with exactly one ITNetModel .* Sequential has 0"):
        parameter_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.05, layer_decay=0.9)
    twins = torch.nn.ModuleDict({name: create_model("tiny", task="backbone") for name in ("a", "b")})
    with pytest.raises(ValueError, match=r"ModuleDict has 2: a, b"):
        parameter_groups(twins, 0.05, head_lr_multiplier=2.0)
