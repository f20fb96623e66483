"""ITNet models: every modality runs, backends agree in eval mode, objectives train, task models share weights."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.models import ITNetForNLVR2, ModelConfig, create_model
from itnet_scale.nn import configure_integrators
from itnet_scale.nn.heads import mask_tokens

SMALL = ModelConfig(dim=32, depth=2, heads=2, vocab_size=60, patch_size=4, point_groups=8, point_group_size=4,
                    contrastive_dim=16, layer={"kernel_width": 4},
                    layers={"0": {"support": "window", "support_size": 3.0}})


def batches(B: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 60, (B, 9), generator=generator)
    ids[1, 6:] = 0
    images = torch.randn(B, 1, 16, 16, generator=generator)
    points = torch.randn(B, 40, 3, generator=generator)
    return {"text": {"text_ids": ids}, "image": {"images": images}, "points": {"points": points},
            "image_text": {"images": images, "text_ids": ids},
            "image_pair_text": {"images": images, "images2": images.flip(-1), "text_ids": ids}}


@pytest.mark.parametrize("modality", ["text", "image", "points", "image_text", "image_pair_text"])
def test_backends_agree_in_eval_mode(modality):
    model = create_model(SMALL, task="backbone").eval()
    batch = batches()[modality]
    configure_integrators(model, backend="reference")
    reference = model(batch)
    configure_integrators(model, backend="tiled")
    tiled = model(batch)
    torch.testing.assert_close(tiled.hidden, reference.hidden, rtol=1e-5, atol=1e-5)
    expected = {"text": 9, "image": 16, "points": 8, "image_text": 25, "image_pair_text": 41}[modality]
    assert reference.hidden.shape == (2, expected, 32)
    if "text_ids" in batch:  # text positions follow the images' planes, padding is only the text's
        text_pos = reference.pos[:, reference.segments["text"]]
        assert text_pos[0, :, 0].tolist() == list(range(1, 10))
        assert reference.padding.sum().item() == 3


def test_lowrank_reference_and_chunked_agree():
    config = ModelConfig(**{**SMALL.__dict__, "layer": {"kernel_width": 0, "integrator": "lowrank", "rank": 8,
                                                        "support": "causal"}, "layers": {}})
    model = create_model(config, task="backbone").eval()
    batch = batches()["text"]
    configure_integrators(model, backend="reference")
    reference = model(batch).hidden
    configure_integrators(model, backend="tiled")
    torch.testing.assert_close(model(batch).hidden, reference, rtol=1e-5, atol=1e-5)


def test_pretraining_objectives_are_finite_and_learn():
    torch.manual_seed(0)
    model = create_model(SMALL)
    data = batches(4)
    ids = data["image_text"]["text_ids"]
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=60, special_ids=range(7),
                                 generator=torch.Generator().manual_seed(1))
    labels[:, 0] = ids[:, 0]  # at least one picked token per row
    batch = {"images": data["image"]["images"], "image_mask": torch.rand(4, 16) < 0.5, "text_ids": inputs,
             "mlm_labels": labels, "itc_text_ids": ids, "points": data["points"]["points"],
             "point_mask": torch.rand(4, 8) < 0.5}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        losses = model.losses(batch)
        assert set(losses) == {"mlm", "mpm", "mpp", "itc"} and all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        first = first if first is not None else total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < 0.7 * first


def test_task_models_share_the_backbone_weights():
    pretrained = create_model(SMALL)
    state = {k: v for k, v in pretrained.state_dict().items() if k.startswith("itnet.")}
    for task, args in (("classification", {"classes": 10}), ("vqa", {"answers": 7}), ("nlvr2", {})):
        model = create_model(SMALL, task=task, **args)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(not k.startswith("itnet.") for k in missing)
    nlvr2 = ITNetForNLVR2(SMALL)
    batch = {**batches()["image_pair_text"], "labels": torch.tensor([0, 1])}
    assert nlvr2(batch).shape == (2, 2) and torch.isfinite(nlvr2.loss(batch))
    vqa = create_model(SMALL, task="vqa", answers=7)
    scores = torch.zeros(2, 7)
    scores[0, 3], scores[1, 1] = 1.0, 0.3
    assert torch.isfinite(vqa.loss({**batches()["image_text"], "answer_scores": scores}))


def test_a_batch_without_inputs_is_named():
    with pytest.raises(ValueError, match=r"batch has no model input: .* got keys \['labels'\]"):
        create_model(SMALL, task="backbone")({"labels": torch.zeros(2)})
