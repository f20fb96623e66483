"""Training FLOPs for MFU: 6 × the trainable parameters every token multiplies (4 × the frozen ones), plus the
mixer's pairs per support."""

from __future__ import annotations

import pytest
from torch import nn

from itnet_scale.models import create_model
from itnet_scale.models.flops import training_flops
from itnet_scale.nn import IntegralTransform, KernelConfig
from itnet_scale.ops import LowRank, MonteCarlo


def test_a_single_transform_per_support():
    for support, size, sources in [("all", None, 100), ("causal", None, 50), ("window", 4.0, 9)]:
        extra = {} if size is None else {"support_size": size}
        layer = IntegralTransform(64, 2, KernelConfig(width=8, support=support, **extra))
        params = sum(p.numel() for p in layer.parameters())
        pair = 32 + 32 + 1.5 * 8
        assert training_flops(layer, tokens=100, length=100) == pytest.approx(100 * (6 * params + 6 * 2 * sources
                                                                                         * pair))
    lowrank = IntegralTransform(64, 2, KernelConfig(width=0, rank=16), LowRank())
    params = sum(p.numel() for p in lowrank.parameters())
    assert training_flops(lowrank, 10, 1000) == pytest.approx(10 * (6 * params + 6 * 2 * 16 * (32 + 32)))
    sampled = IntegralTransform(64, 2, KernelConfig(width=0), MonteCarlo(samples=40))
    params = sum(p.numel() for p in sampled.parameters())
    assert training_flops(sampled, 10, 1000) == pytest.approx(10 * (6 * params + 6 * 2 * 40 * (32 + 32)))
    assert training_flops(sampled, 10, 30) == pytest.approx(10 * (6 * params + 6 * 2 * 30 * (32 + 32)))


def test_embedding_tables_are_not_dense_work():
    model = create_model("tiny", vocab_size=400)
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    assert tables == 400 * 192
    dense = sum(p.numel() for p in model.parameters()) - tables  # the tied MLM decoder is the same tensor
    mixers = training_flops(model, 1, 64) - 6 * dense
    assert mixers > 0 and training_flops(model, 3, 64) == pytest.approx(3 * training_flops(model, 1, 64))


def test_frozen_parameters_cost_no_weight_gradient():
    layer = IntegralTransform(64, 2, KernelConfig(width=8))
    trained = training_flops(layer, 10, 100)
    params = sum(p.numel() for p in layer.parameters())
    frozen = layer.o_proj.weight.requires_grad_(False).numel()
    assert training_flops(layer, 10, 100) == pytest.approx(trained - 10 * 2 * frozen)
    assert 0 < frozen < params
