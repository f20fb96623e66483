"""ITNet models: every modality runs, the exact backends (and the low-rank ones) agree in eval mode, the
pretraining objectives are the heads' losses and train, task models share the backbone's weights."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf

from itnet_scale.config import to_yaml
from itnet_scale.models import ITNetForNLVR2, ITNetForPretraining, ModelConfig, create_model, load_model_config
from itnet_scale.nn import configure_integrators
from itnet_scale.nn.heads import IGNORE, mask_tokens
from itnet_scale.ops import LowRank

SMALL = ModelConfig(dim=32, depth=2, heads=2, vocab_size=60, image_channels=1, patch_size=4, point_tokens=8,
                    point_group_size=4, point_hidden=16, contrastive_dim=16, layer={"kernel_width": 4},
                    layers={"0": {"support": "window", "support_size": 3.0}})
TOKENS = {"text": 9, "image": 16, "points": 8, "image_text": 25, "image_pair_text": 41}


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    """Tile functions run eagerly: these sequences are tiny, and compiling them costs seconds per shape
    (the compiled path is checked against the eager one in tests/ops, and once here, marked slow)."""
    monkeypatch.setenv("ITNET_COMPILE", "0")


def batches(B: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 60, (B, 9), generator=generator)
    ids[1, 6:] = 0  # padding
    images = torch.randn(B, 1, 16, 16, generator=generator)
    points = torch.randn(B, 40, 3, generator=generator)
    return {"text": {"text_ids": ids}, "image": {"images": images}, "points": {"points": points},
            "image_text": {"images": images, "text_ids": ids},
            "image_pair_text": {"images": images, "images2": images.flip(-1), "text_ids": ids}}


def backend_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    configure_integrators(model, backend="reference")
    reference = model(batch).hidden
    configure_integrators(model, backend="torch")
    return reference, model(batch).hidden


@pytest.mark.parametrize("modality", list(TOKENS))
def test_exact_backends_agree_in_eval_mode(modality):
    model = create_model(SMALL, task="backbone").eval()
    reference, tiled = backend_outputs(model, batches()[modality])
    assert reference.shape == (2, TOKENS[modality], 32)
    torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("modality", "support"), [("text", "causal"), ("image_text", "all"), ("points", "all")])
def test_lowrank_reference_and_chunked_agree(modality, support):
    config = ModelConfig(**{**asdict(SMALL), "layers": {}, "layer": {"kernel_width": 4, "integrator": "lowrank",
                                                                      "rank": 8, "support": support, "chunk_size": 4}})
    model = create_model(config, task="backbone").eval()
    assert all(isinstance(block.mixer.integrator, LowRank) for block in model.backbone.blocks)
    reference, chunked = backend_outputs(model, batches()[modality])
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_exact_backends_agree_with_compiled_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "1")
    model = create_model(SMALL, task="backbone").eval()
    reference, tiled = backend_outputs(model, batches()["image_text"])
    torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)


def test_output_positions_segments_and_pooling():
    model = create_model(SMALL, task="backbone").double().eval()
    batch = batches()["image_pair_text"]
    batch = {key: value.double() if value.is_floating_point() else value for key, value in batch.items()}
    output = model(batch)
    assert output.modality == "image_pair_text"
    assert output.inputs.segments == {"image": slice(0, 16), "image2": slice(16, 32), "text": slice(32, 41)}
    assert output.pos[0, 32:, 0].tolist() == list(range(1, 10)) and (output.pos[:, 16:32, 0] == -1).all()
    assert output.padding_mask.sum().item() == 3
    text, text_padding = output.part("text")
    assert text_padding[1].tolist() == [False] * 6 + [True] * 3
    torch.testing.assert_close(model.pool(output, "text")[1], text[1, :6].mean(0))
    torch.testing.assert_close(model.pool(output)[1], output.hidden[1, :38].mean(0))
    with pytest.raises(ValueError, match=r"this image_pair_text batch has no 'points' tokens"):
        output.part("points")


def test_text_padding_does_not_change_real_tokens():
    model = create_model(SMALL, task="backbone").double().eval()
    ids = torch.randint(7, 60, (2, 6))
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model({"text_ids": longer}).hidden[:, :6], model({"text_ids": ids}).hidden)


def pretraining_batch(B: int = 4) -> dict[str, torch.Tensor]:
    data = batches(B)
    ids = data["image_text"]["text_ids"]
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=60, special_ids=range(7),
                                 generator=torch.Generator().manual_seed(1))
    labels[:, 0], inputs[:, 0] = ids[:, 0], 4  # at least one masked token per row
    return {"images": data["image"]["images"], "text_ids": inputs, "mlm_labels": labels,
            "image_mask": torch.rand(B, 16, generator=torch.Generator().manual_seed(2)) < 0.5}


def test_pretraining_losses_are_the_heads_losses():
    model = create_model(SMALL).double().eval()
    assert isinstance(model, ITNetForPretraining)
    assert model.mlm.decoder.weight is model.itnet.encoder.text.embedding.weight  # tied by default
    batch = {k: v.double() if v.is_floating_point() else v for k, v in pretraining_batch().items()}
    losses = model(batch)
    assert set(losses) == {"mlm", "mpm", "itc"}
    joint = model.itnet(batch)
    torch.testing.assert_close(losses["mlm"], model.mlm.loss(model.mlm(joint.part("text")[0]), batch["mlm_labels"]))
    torch.testing.assert_close(losses["mpm"], model.mpm.loss(model.mpm(joint.part("image")[0]), batch["images"],
                                                             batch["image_mask"]))
    # ITC: image alone and the unmasked text alone, pooled and contrasted
    original = torch.where(batch["mlm_labels"] != IGNORE, batch["mlm_labels"], batch["text_ids"])
    pooled_image = model.itnet.pool(model.itnet({"images": batch["images"]}))
    pooled_text = model.itnet.pool(model.itnet({"text_ids": original}))
    torch.testing.assert_close(losses["itc"], model.itc.loss(*model.itc(pooled_image, pooled_text)))
    # the data-parallel hook: every rank's pooled features, standardized together; this rank's rows at an offset
    others = torch.randn(3, 32, dtype=torch.float64)
    gathered = model(batch, gather=lambda local: (torch.cat([others, local]), 3))["itc"]
    all_image, all_text = model.itc(torch.cat([others, pooled_image]), torch.cat([others, pooled_text]))
    torch.testing.assert_close(gathered, model.itc.loss(all_image, all_text, offset=3, rows=len(pooled_image)))
    points = {"points": batches()["points"]["points"].double(),
              "point_mask": torch.tensor([[True] * 3 + [False] * 5] * 2)}
    point_losses = model(points)
    output = model.itnet(points)
    assert set(point_losses) == {"mpp"}
    torch.testing.assert_close(point_losses["mpp"], model.mpp.loss(model.mpp(output.part("points")[0]),
                                                                   output.inputs.point_groups, points["point_mask"]))
    assert set(model({"images": batch["images"], "text_ids": original})) == {"itc"}
    with pytest.raises(ValueError, match=r"this text batch \(keys \['text_ids'\]\) asks for no pretraining objective"):
        model({"text_ids": original})


def test_pretraining_objectives_learn():
    torch.manual_seed(0)
    model = create_model(SMALL)
    batch = {**pretraining_batch(), "points": batches(4)["points"]["points"]}
    point_batch = {"points": batch.pop("points"), "point_mask": torch.rand(4, 8) < 0.5}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(12):
        losses = {**model.losses(batch), **model.losses(point_batch)}
        assert set(losses) == {"mlm", "mpm", "mpp", "itc"} and all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[-1] < 0.7 * totals[0]


def test_task_models_share_the_backbone_weights():
    pretrained = create_model(SMALL).eval()
    state = {k: v for k, v in pretrained.state_dict().items() if k.startswith("itnet.")}
    batch = batches()["image_pair_text"]
    for task, args in (("classification", {"classes": 10}), ("vqa", {"answers": 7}), ("nlvr2", {})):
        model = create_model(SMALL, task=task, **args).eval()
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and missing and all(k.startswith("head.") for k in missing)
        torch.testing.assert_close(model.itnet(batch).hidden, pretrained.itnet(batch).hidden, rtol=0, atol=0)
    nlvr2 = create_model(SMALL, task="nlvr2")
    assert isinstance(nlvr2, ITNetForNLVR2) and nlvr2(batch).shape == (2, 2)
    assert torch.isfinite(nlvr2.loss({**batch, "labels": torch.tensor([0, 1])}))
    with pytest.raises(ValueError, match=r"NLVR2 takes image_pair_text batches .* got 'image_text'"):
        nlvr2(batches()["image_text"])
    vqa = create_model(SMALL, task="vqa", answers=7)
    scores = torch.zeros(2, 7)
    scores[0, 3], scores[1, 1] = 1.0, 0.3
    assert vqa(batches()["image_text"]).shape == (2, 7)
    assert torch.isfinite(vqa.loss({**batches()["image_text"], "answer_scores": scores}))
    classifier = create_model(SMALL, task="classification", classes=5)
    for modality in ("image", "text", "points"):  # ImageNet, GLUE, ModelNet40
        assert classifier(batches()[modality]).shape == (2, 5)


def test_config_round_trips_through_yaml(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(to_yaml(SMALL))
    assert OmegaConf.to_yaml(OmegaConf.structured(SMALL)) == path.read_text()
    reloaded = load_model_config(path)
    assert asdict(reloaded) == asdict(SMALL)
    shapes = {k: v.shape for k, v in create_model(reloaded).state_dict().items()}
    assert shapes == {k: v.shape for k, v in create_model(SMALL).state_dict().items()}


def test_a_batch_without_inputs_is_named():
    with pytest.raises(ValueError, match=r"batch inputs \[\] \(keys \['labels'\]\) make no modality"):
        create_model(SMALL, task="backbone")({"labels": torch.zeros(2)})
