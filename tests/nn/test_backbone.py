"""ITNetBackbone: per-block transform settings land on their blocks, padding is ignored, the final norm."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import KernelConfig, TransformConfig, configure_integrators
from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.ops import Exact, LowRank


def sequence_positions(B: int, N: int) -> torch.Tensor:
    pos = torch.zeros(B, N, 3, dtype=torch.float64)
    pos[..., 0] = torch.arange(1, N + 1)
    return pos


def test_each_block_gets_its_own_settings():
    local = TransformConfig(KernelConfig(width=4, support="window", support_size=2.0))
    lowrank = TransformConfig(KernelConfig(width=4, rank=8), LowRank())
    backbone = ITNetBackbone(16, 3, 2, pos_dim=3, transforms=[local, TransformConfig(), lowrank])
    mixers = [block.mixer for block in backbone.blocks]
    assert [m.spec.support for m in mixers] == ["window", "all", "all"]
    assert [m.kernel.width for m in mixers] == [4, 16, 4]
    assert [m.integrator for m in mixers] == [Exact(), Exact(), LowRank()]
    assert mixers[2].features is not None and mixers[1].features is None
    shared = ITNetBackbone(16, 2, 2, pos_dim=3, transforms=local)  # one setting: every block
    assert all(block.mixer.kernel == local.kernel for block in shared.blocks)
    assert isinstance(backbone.norm, torch.nn.LayerNorm)


def test_forward_shapes_and_final_norm():
    backbone = ITNetBackbone(16, 2, 2, pos_dim=3, transforms=TransformConfig(KernelConfig(width=4))).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = backbone(x, sequence_positions(2, 6))
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 6, dtype=torch.float64), rtol=0, atol=1e-12)
    hidden = x
    for block in backbone.blocks:
        hidden = block(hidden, sequence_positions(2, 6))
    torch.testing.assert_close(out, backbone.norm(hidden))


@pytest.mark.parametrize("transform", [TransformConfig(KernelConfig(width=4)),
                                       TransformConfig(KernelConfig(width=4, support="window", support_size=2.0)),
                                       TransformConfig(KernelConfig(width=0, rank=8), LowRank())],
                         ids=["all", "window", "lowrank"])
def test_real_tokens_ignore_appended_padding(transform):
    backbone = ITNetBackbone(16, 2, 2, pos_dim=3, transforms=transform).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = backbone(x, sequence_positions(2, 6))
    padded = torch.cat([x, 5 * torch.randn(2, 3, 16, dtype=torch.float64)], dim=1)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[:, 6:] = True
    for backend in ("reference", "torch"):
        configure_integrators(backbone, backend=backend)
        torch.testing.assert_close(backbone(padded, sequence_positions(2, 9), padding)[:, :6], out)
    assert not torch.allclose(backbone(padded, sequence_positions(2, 9))[:, :6], out)  # unmasked: it would matter


def test_drop_path_grows_linearly_with_depth():
    backbone = ITNetBackbone(8, 5, 2, pos_dim=3, drop_path=0.2, transforms=TransformConfig(KernelConfig(width=0)))
    assert [block.drop_path.prob for block in backbone.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_bad_settings_name_the_layer():
    with pytest.raises(ValueError, match=r"transforms: 3 given for depth=2 \(one, or one per block\)"):
        ITNetBackbone(16, 2, 2, pos_dim=3, transforms=[TransformConfig()] * 3)
    with pytest.raises(ValueError, match=r"the lowrank integrator integrates support 'all' or 'causal'"):
        TransformConfig(KernelConfig(support="window", support_size=2.0, rank=4), LowRank())
    with pytest.raises(ValueError, match=r"layer 1: offset_range needs one entry per position dim \(3\)"):
        ITNetBackbone(16, 2, 2, pos_dim=3, transforms=[TransformConfig(), TransformConfig(KernelConfig(
            offset_range=(2, 2)))])
    with pytest.raises(ValueError, match=r"depth must be >= 1, got 0"):
        ITNetBackbone(16, 0, 2, pos_dim=3)
