"""ITNetBackbone: per-layer settings land on their layers, padding is ignored, bad overrides are named."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.nn import configure_integrators
from itnet_scale.nn.backbone import ITNetBackbone, expand_layer_settings, layer_range


def sequence_positions(B: int, N: int) -> torch.Tensor:
    pos = torch.zeros(B, N, 3, dtype=torch.float64)
    pos[..., 0] = torch.arange(1, N + 1)
    return pos


def test_overrides_land_on_the_named_layers_in_order():
    backbone = ITNetBackbone(16, 5, 2, pos_dim=3, layer={"kernel_width": 4},
                             layers={"0-1": {"support": "window", "support_size": 2.0},
                                     4: {"integrator": "lowrank", "rank": 8},
                                     "1": {"support": "radius", "support_size": 3.0, "kernel_width": 0}})
    mixers = [block.mixer for block in backbone.blocks]
    assert [m.spec.support for m in mixers] == ["window", "radius", "all", "all", "all"]  # "1" listed later: wins
    assert [m.spec.support_size for m in mixers[:2]] == [2.0, 3.0]
    assert [m.kernel_width for m in mixers] == [4, 0, 4, 4, 4]
    assert [m.integrator for m in mixers] == ["exact"] * 4 + ["lowrank"]
    assert mixers[4].features is not None and mixers[3].features is None
    assert backbone.layer_settings[1] == {"kernel_width": 0, "support": "radius", "support_size": 3.0}
    assert isinstance(backbone.norm, torch.nn.LayerNorm)


def test_forward_shapes_and_final_norm():
    backbone = ITNetBackbone(16, 2, 2, pos_dim=3, layer={"kernel_width": 4}).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = backbone(x, sequence_positions(2, 6))
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 6, dtype=torch.float64), rtol=0, atol=1e-12)
    hidden = x
    for block in backbone.blocks:
        hidden = block(hidden, sequence_positions(2, 6))
    torch.testing.assert_close(out, backbone.norm(hidden))


@pytest.mark.parametrize("layer", [{"kernel_width": 4},
                                   {"kernel_width": 4, "support": "window", "support_size": 2.0},
                                   {"kernel_width": 0, "integrator": "lowrank", "rank": 8}])
def test_real_tokens_ignore_appended_padding(layer):
    backbone = ITNetBackbone(16, 2, 2, pos_dim=3, layer=layer).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = backbone(x, sequence_positions(2, 6))
    padded = torch.cat([x, 5 * torch.randn(2, 3, 16, dtype=torch.float64)], dim=1)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[:, 6:] = True
    for backend in ("reference", "tiled"):
        configure_integrators(backbone, backend=backend)
        torch.testing.assert_close(backbone(padded, sequence_positions(2, 9), padding)[:, :6], out)
    assert not torch.allclose(backbone(padded, sequence_positions(2, 9))[:, :6], out)  # unmasked: it would matter


def test_drop_path_grows_linearly_with_depth():
    backbone = ITNetBackbone(8, 5, 2, pos_dim=3, drop_path=0.2, layer={"kernel_width": 0})
    assert [block.drop_path.prob for block in backbone.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_layer_keys_and_ranges():
    assert list(layer_range("3", 4)) == [3] and list(layer_range(1, 4)) == [1]
    assert list(layer_range(" 0-2", 4)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"layers: key 'first' must be a layer index or an inclusive range"):
        layer_range("first", 4)
    with pytest.raises(ValueError, match=r"layers: key '2-5' names layers outside 0\.\.3 \(depth=4\)"):
        expand_layer_settings(4, {}, {"2-5": {"kernel_width": 2}})
    with pytest.raises(ValueError, match=r"layers: key '3-1' names layers outside"):
        layer_range("3-1", 4)


def test_bad_settings_name_the_key_and_the_layer():
    with pytest.raises(ValueError, match=r"layers\['2-3'\] \(layer 2\): unknown IntegralTransform setting "
                                         r"'kernel_widht'; did you mean 'kernel_width'\?"):
        ITNetBackbone(16, 4, 2, pos_dim=3, layers={"2-3": {"kernel_widht": 3}})
    with pytest.raises(ValueError, match=r"^layer: unknown IntegralTransform setting 'suport'"):
        ITNetBackbone(16, 4, 2, pos_dim=3, layer={"suport": "window"})
    with pytest.raises(ValueError, match=r"layer 1: support must be one of .* got 'diagonal'"):
        ITNetBackbone(16, 2, 2, pos_dim=3, layers={"1": {"support": "diagonal"}})
    with pytest.raises(ValueError, match=r"layer 1: decay=True needs a causal support"):
        ITNetBackbone(16, 2, 2, pos_dim=3, layers={"1": {"decay": True}})
    with pytest.raises(ValueError, match=r"depth must be >= 1, got 0"):
        ITNetBackbone(16, 0, 2, pos_dim=3)
