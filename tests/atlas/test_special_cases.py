"""The atlas on the exact special cases of :mod:`itnet_scale.nn.special`: convolutions score local,
translation-invariant and content-independent (conv-like), multi-head attention content-dependent
(attention-like), the state-space scans causal (recurrence-like)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from itnet_scale.atlas import Atlas, AtlasSettings, atlas, capture_kernels
from itnet_scale.atlas.scores import ATTENTION, CONV, RECURRENCE
from itnet_scale.nn.special import from_conv1d, from_conv2d, from_multihead_attention, selective_scan, ssd


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_conv1d_is_conv_like():
    conv = from_conv1d(nn.Conv1d(3, 5, 3, padding=1))
    # ITNetConv places each query at its first tap, so the farthest tap is (k − 1)·dilation = 2 units away
    result = atlas(conv, torch.randn(4, 3, 20), settings=AtlasSettings(radius=2.0))
    (layer,) = result.layers
    assert layer.kernel.kernel.shape == (4, 3, 20, 20)  # taps as heads, 20 outputs × 20 inputs
    for s in layer.scores:
        assert s.locality == 1.0 and s.translation == pytest.approx(1.0) and s.content == 0.0
        assert s.kind == CONV
    # the middle tap reads one unit away, at or after the query
    assert layer.scores[1].distance == pytest.approx(1.0) and layer.scores[1].causality == 0.0
    assert layer.scores[0].causality == 1.0  # the first tap reads the query's own position
    # with the default radius 1.5 the farthest tap is not local: the radius is what decides
    assert atlas(conv, torch.randn(4, 3, 20)).layers[0].scores[2].kind != CONV


def test_conv2d_is_conv_like():
    conv = from_conv2d(nn.Conv2d(2, 4, 3, padding=1))
    result = atlas(conv, torch.randn(3, 2, 8, 8), settings=AtlasSettings(radius=2 * math.sqrt(2) + 1e-6))
    (layer,) = result.layers
    assert layer.kernel.kernel.shape == (3, 9, 64, 64) and layer.kernel.pos_s.shape == (3, 64, 2)
    assert result.kinds() == [[CONV] * 9]
    assert all(s.content == 0.0 and s.translation == pytest.approx(1.0) for s in layer.scores)


def test_multihead_attention_is_attention_like():
    mha = from_multihead_attention(nn.MultiheadAttention(32, 4, batch_first=True))
    x = torch.randn(4, 24, 32)
    with capture_kernels(mha) as kernels:
        mha.eval()(x, x, x, need_weights=False)
    result = Atlas.from_kernels(kernels)
    assert result.kinds() == [[ATTENTION] * 4]
    for s in result.layers[0].scores:
        assert s.content > 0.1 and 0.3 < s.causality < 0.7 and s.locality < 0.3


def test_ssd_is_recurrence_like():
    b, L, h, P, n = 3, 24, 2, 3, 4
    with capture_kernels() as kernels:  # the layer is built inside the call: capture any IntegralTransform
        ssd(torch.randn(b, L, h, P), torch.rand(b, L, h) * 0.5, -torch.rand(h) - 0.1, torch.randn(b, L, 1, n),
            torch.randn(b, L, 1, n))
    (layer,) = Atlas.from_kernels(kernels).layers
    assert layer.kernel.name == "IntegralTransform[0]" and layer.kernel.kernel.shape == (b, h, L, L)
    for s in layer.scores:
        assert s.causality == 1.0 and s.kind == RECURRENCE
        assert s.content > 0.1  # C_i·B_j and the step sizes follow the input


def test_selective_scan_is_recurrence_like():
    b, d, L, n = 2, 3, 16, 4
    with capture_kernels() as kernels:
        selective_scan(torch.randn(b, d, L), torch.randn(b, d, L), -torch.rand(d, n) - 0.1, torch.randn(d, n),
                       torch.randn(d, n), delta_softplus=True)
    (layer,) = Atlas.from_kernels(kernels).layers
    assert layer.kernel.kernel.shape == (b, d * n, L, L)
    assert all(s.causality == 1.0 and s.kind == RECURRENCE for s in layer.scores)
