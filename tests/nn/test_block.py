"""ITNetBlock: pre-norm residual structure, the MLP, stochastic depth, the transform built from its settings."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import KernelConfig
from itnet_scale.nn.block import MLP, DropPath, ITNetBlock, TransformConfig
from itnet_scale.ops import Exact, LowRank


def sequence_positions(B: int, N: int) -> torch.Tensor:
    """Text-like positions ``(t + 1, 0, 0)`` ``[B, N, 3]`` in float64."""
    pos = torch.zeros(B, N, 3, dtype=torch.float64)
    pos[..., 0] = torch.arange(1, N + 1)
    return pos


def test_block_shapes_and_exact_pre_norm_residual_formula():
    block = ITNetBlock(16, 2, pos_dim=3, transform=TransformConfig(KernelConfig(width=4))).double()
    x, pos = torch.randn(3, 5, 16, dtype=torch.float64), sequence_positions(3, 5)
    out = block(x, pos)
    assert out.shape == (3, 5, 16)
    first = x + block.mixer(block.norm1(x), pos)
    torch.testing.assert_close(out, first + block.mlp(block.norm2(first)), rtol=0, atol=1e-12)
    assert block.mixer.kernel.width == 4 and block.mixer.pos_dim == 3
    assert block.mlp.fc1.out_features == 64  # mlp_ratio 4


def test_block_is_identity_when_both_branches_output_zero():
    block = ITNetBlock(16, 2, pos_dim=3, transform=TransformConfig(KernelConfig(width=4))).double()
    x, pos = torch.randn(2, 7, 16, dtype=torch.float64), sequence_positions(2, 7)
    torch.nn.init.zeros_(block.mixer.o_proj.weight)
    torch.nn.init.zeros_(block.mixer.o_proj.bias)
    assert not torch.equal(block(x, pos), x)  # the MLP branch still adds
    torch.nn.init.zeros_(block.mlp.fc2.weight)
    torch.nn.init.zeros_(block.mlp.fc2.bias)
    assert torch.equal(block(x, pos), x)


def test_branches_read_normalized_inputs():
    """Pre-norm: the transform sees norm1(x), so scaling x leaves the transform's branch unchanged."""
    block = ITNetBlock(16, 2, pos_dim=3, transform=TransformConfig(KernelConfig(width=4))).double()
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
    block = ITNetBlock(8, 2, pos_dim=3, drop_path=0.5, transform=TransformConfig(KernelConfig(width=0))).double().eval()
    x, pos = torch.randn(2, 3, 8, dtype=torch.float64), sequence_positions(2, 3)
    first = x + block.mixer(block.norm1(x), pos)
    torch.testing.assert_close(block(x, pos), first + block.mlp(block.norm2(first)))  # eval: no dropping


def test_the_transform_is_built_from_its_settings():
    settings = TransformConfig(KernelConfig(width=2, support="causal", rank=4), LowRank(chunk_size=8), head_dim=3,
                               value_dim=5, bias=False)
    mixer = ITNetBlock(12, 2, pos_dim=3, transform=settings).mixer
    assert (mixer.kernel, mixer.integrator, mixer.pos_dim) == (settings.kernel, settings.integrator, 3)
    assert (mixer.head_dim, mixer.value_dim, mixer.v_proj.bias) == (3, 5, None)
    assert ITNetBlock(12, 2, pos_dim=3).mixer.integrator == Exact()  # defaults: TransformConfig()
    with pytest.raises(ValueError, match=r"support must be one of"):
        KernelConfig(support="diagonal")
    with pytest.raises(ValueError, match=r"the lowrank integrator integrates support 'all' or 'causal'"):
        ITNetBlock(16, 2, pos_dim=3, transform=TransformConfig(KernelConfig(support="window", support_size=1.0),
                                                               LowRank()))
