"""ITNetBackbone: per-block transform settings land on their blocks, padding is ignored, the final norm."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from itnet_scale.models import create_model, load_model_config
from itnet_scale.nn import KernelConfig, TransformConfig, configure_activation_checkpointing, configure_integrators
from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.heads import mask_tokens
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


# -- activation checkpointing ---------------------------------------------------------------------------------------

#: The tiny model with dropout and stochastic depth on, and every integrator: layers 0–1 exact in windows (as
#: configured), layer 2 low rank, layer 3 Monte Carlo.
CHECKPOINTED_TINY = {"dropout": 0.1, "drop_path": 0.2,
                     "layers": {"0-1": {"support": "window", "support_size": 4.0},
                                "2": {"integrator": "lowrank", "rank": 16},
                                "3": {"integrator": "montecarlo", "samples": 24, "sample_block": 16}}}


def tiny_pretraining_batch(B: int = 4, L: int = 48) -> dict[str, torch.Tensor]:
    """An image–text pretraining batch for the tiny model: 32×32 digits-sized images (64 patches), ``L`` text ids
    masked BERT-style, half the patches masked: MLM, masked patches and the contrastive loss."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(7, 3000, (B, L), generator=generator)
    ids[1, L - 9:] = 0  # padding
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=3000, special_ids=range(7), generator=generator)
    return {"images": torch.randn(B, 1, 32, 32, generator=generator), "text_ids": inputs, "mlm_labels": labels,
            "image_mask": torch.rand(B, 64, generator=generator) < 0.5}


def tiny_gradients(model: torch.nn.Module, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The gradients of the summed pretraining losses, global and Monte Carlo generators seeded by ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    model.itnet.backbone.blocks[3].mixer.generator.manual_seed(seed + 1)
    sum(model(batch).values()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("every", [1, 2, 3], ids=["all", "every-2nd", "every-3rd"])
def test_checkpointed_blocks_give_the_same_gradients(monkeypatch, every):
    """Recomputation replays dropout, drop path and the Monte Carlo draws (from torch's and from the layer's own
    generator), so the gradients are bitwise those without checkpointing; afterwards the layer's generator is where
    an unchecked run leaves it. every=2 recomputes blocks 0 (exact) and 2 (lowrank), every=3 blocks 0 and 3
    (Monte Carlo), every=1 all four."""
    monkeypatch.setenv("ITNET_COMPILE", "0")  # tiny tiles: compiling would cost seconds, not change the numbers
    torch.manual_seed(0)
    model = create_model(load_model_config("tiny", **CHECKPOINTED_TINY)).train()
    generator = model.itnet.backbone.blocks[3].mixer.generator = torch.Generator()
    batch = tiny_pretraining_batch()
    reference = tiny_gradients(model, batch, seed=7)
    generator_after = generator.get_state()
    assert all(any(n.startswith(f"itnet.backbone.blocks.{i}.mixer.") for n in reference) for i in range(4))
    assert not all(torch.equal(reference[n], g) for n, g in tiny_gradients(model, batch, seed=8).items())  # random

    calls = Counter()
    for index, block in enumerate(model.itnet.backbone.blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: calls.update([index]))
    assert configure_activation_checkpointing(model, every) == 1
    assert model.itnet.backbone.checkpointed_blocks() == list(range(0, 4, every))
    checkpointed = tiny_gradients(model, batch, seed=7)
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        assert torch.equal(checkpointed[name], grad), name
    assert torch.equal(generator.get_state(), generator_after)
    # Three backbone passes (MLM + patches, the image alone, the text alone); checkpointed blocks start twice each
    # (a recomputation stops early, once it has what backward needs: count starts, not ends).
    assert dict(calls) == {i: 6 if i % every == 0 else 3 for i in range(4)}

    calls.clear()
    with torch.no_grad():
        model(batch)
    model.eval()
    model(batch)
    assert set(calls.values()) == {6}  # no recomputation without gradients or in eval mode: 3 passes each, twice


def test_checkpoint_every_is_checked():
    with pytest.raises(ValueError, match=r"checkpoint_every must be an int >= 0 \(0 = off"):
        ITNetBackbone(16, 2, 2, pos_dim=3, checkpoint_every=-1)
    backbone = ITNetBackbone(16, 2, 2, pos_dim=3)
    with pytest.raises(ValueError, match="activation checkpointing 'every' must be an int >= 0"):
        configure_activation_checkpointing(backbone, 1.5)
    assert backbone.checkpointed_blocks() == []
