"""ITNet block and backbone: pre-norm residual structure, per-layer settings, padding, errors naming the layer."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.block import ITNetBlock


def positions(B: int, N: int) -> torch.Tensor:
    pos = torch.zeros(B, N, 3, dtype=torch.float64)
    pos[..., 0] = torch.arange(1, N + 1)
    return pos


def test_block_is_identity_when_both_branches_output_zero():
    block = ITNetBlock(16, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.nn.init.zeros_(block.mixer.o_proj.weight)
    torch.nn.init.zeros_(block.mixer.o_proj.bias)
    assert not torch.equal(block(x, positions(2, 7)), x)  # the MLP branch still adds
    torch.nn.init.zeros_(block.mlp.fc2.weight)
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    torch.testing.assert_close(block(x, positions(2, 7)), x, rtol=0, atol=0)


def test_block_is_pre_norm():
    """The branches read normalized inputs: scaling x by 10 leaves both branch inputs (almost: LayerNorm's eps)
    the same, and the block is exactly x + IT(norm1 x) then + MLP(norm2 ·)."""
    block = ITNetBlock(16, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x, pos = torch.randn(2, 5, 16, dtype=torch.float64), positions(2, 5)
    first = x + block.mixer(block.norm1(x), pos)
    torch.testing.assert_close(block(x, pos), first + block.mlp(block.norm2(first)))
    torch.testing.assert_close(block.norm1(10 * x), block.norm1(x), rtol=1e-5, atol=1e-5)


def test_backbone_applies_per_layer_settings_and_ignores_padding():
    layers = [{"support": "window", "support_size": 2.0, "kernel_width": 4}, {"kernel_width": 4},
              {"integrator": "lowrank", "rank": 8, "kernel_width": 0}]
    backbone = ITNetBackbone(16, 2, layers, pos_dim=3).double().eval()
    assert [b.mixer.spec.support for b in backbone.blocks] == ["window", "all", "all"]
    assert [b.mixer.integrator for b in backbone.blocks] == ["exact", "exact", "lowrank"]
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = backbone(x, positions(2, 6))
    padded = torch.cat([x, torch.randn(2, 3, 16, dtype=torch.float64)], dim=1)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[:, 6:] = True
    torch.testing.assert_close(backbone(padded, positions(2, 9), padding)[:, :6], out)


def test_backbone_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 1: .*unexpected keyword argument 'kernel_widht'"):
        ITNetBackbone(16, 2, [{}, {"kernel_widht": 3}], pos_dim=3)
    with pytest.raises(ValueError, match=r"layer 0: .*support"):
        ITNetBackbone(16, 2, [{"support": "diagonal"}], pos_dim=3)
