"""ITNetBlock: pre-norm residual structure, the MLP, stochastic depth, layer settings checked by name."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn.block import LAYER_SETTINGS, MLP, DropPath, ITNetBlock, check_layer_settings


def sequence_positions(B: int, N: int) -> torch.Tensor:
    """Text-like positions ``(t + 1, 0, 0)`` ``[B, N, 3]`` in float64."""
    pos = torch.zeros(B, N, 3, dtype=torch.float64)
    pos[..., 0] = torch.arange(1, N + 1)
    return pos


def test_block_shapes_and_exact_pre_norm_residual_formula():
    block = ITNetBlock(16, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x, pos = torch.randn(3, 5, 16, dtype=torch.float64), sequence_positions(3, 5)
    out = block(x, pos)
    assert out.shape == (3, 5, 16)
    first = x + block.mixer(block.norm1(x), pos)
    torch.testing.assert_close(out, first + block.mlp(block.norm2(first)), rtol=0, atol=1e-12)
    assert block.mixer.kernel_width == 4 and block.mixer.pos_dim == 3
    assert block.mlp.fc1.out_features == 64  # mlp_ratio 4


def test_block_is_identity_when_both_branches_output_zero():
    block = ITNetBlock(16, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x, pos = torch.randn(2, 7, 16, dtype=torch.float64), sequence_positions(2, 7)
    torch.nn.init.zeros_(block.mixer.o_proj.weight)
    torch.nn.init.zeros_(block.mixer.o_proj.bias)
    assert not torch.equal(block(x, pos), x)  # the MLP branch still adds
    torch.nn.init.zeros_(block.mlp.fc2.weight)
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    assert torch.equal(block(x, pos), x)


def test_branches_read_normalized_inputs():
    """Pre-norm: the transform sees norm1(x), so scaling x leaves the transform's branch unchanged."""
    block = ITNetBlock(16, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x, pos = torch.randn(2, 6, 16, dtype=torch.float64), sequence_positions(2, 6)
    torch.nn.init.zeros_(block.mlp.fc2.weight)
    torch.nn.init.zeros_(block.mlp.fc2.bias)  # the block is now x + IT(norm1(x))
    torch.testing.assert_close(block(10 * x, pos) - 10 * x, block(x, pos) - x, rtol=1e-6, atol=1e-6)


def test_mlp_is_gelu_two_layer():
    mlp = MLP(4, 8).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    drop = DropPath(0.25)
    branch = torch.ones(4000, 3, 2)
    out = drop(branch)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all or nothing per sample
    assert abs(float((per_sample[:, 0] == 0).float().mean()) - 0.25) < 0.03
    assert abs(float(out.mean()) - 1.0) < 0.05
    assert torch.equal(drop.eval()(branch), branch)
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\), got 1.0"):
        DropPath(1.0)
    block = ITNetBlock(8, 2, pos_dim=3, drop_path=0.5, layer={"kernel_width": 0}).double().eval()
    x, pos = torch.randn(2, 3, 8, dtype=torch.float64), sequence_positions(2, 3)
    first = x + block.mixer(block.norm1(x), pos)
    torch.testing.assert_close(block(x, pos), first + block.mlp(block.norm2(first)))  # eval: no dropping


def test_layer_settings_are_checked_by_name():
    assert "kernel_width" in LAYER_SETTINGS and "integrator" in LAYER_SETTINGS and "pos_dim" not in LAYER_SETTINGS
    with pytest.raises(ValueError, match=r"layer: unknown IntegralTransform setting 'kernel_widht'; "
                                         r"did you mean 'kernel_width'\?"):
        ITNetBlock(16, 2, pos_dim=3, layer={"kernel_widht": 4})
    with pytest.raises(ValueError, match=r"unknown IntegralTransform setting 'pos_dim' \(the block sets 'pos_dim'"):
        check_layer_settings({"pos_dim": 2}, "layer")
    with pytest.raises(ValueError, match=r"support must be one of"):
        ITNetBlock(16, 2, pos_dim=3, layer={"support": "diagonal"})
