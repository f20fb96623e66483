"""ITNet models: every modality runs, the exact backends (and the low-rank ones) agree in eval mode, the
pretraining objectives are the heads' losses and train, task models share the backbone's weights."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf

from itnet_scale.config import to_yaml
from itnet_scale.models import (
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForRegression,
    ModelConfig,
    count_parameters,
    create_model,
    load_model_config,
)
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
    paired = create_model(dataclasses.replace(SMALL, image_pair_form="paired"), task="nlvr2").eval()
    missing, _ = paired.load_state_dict(state, strict=False)
    assert all(k.startswith("head.") for k in missing)
    # paired: (image, text) and (image 2, text) through the backbone, pooled and concatenated in that order
    itnet = paired.itnet
    first = itnet.pool(itnet({"images": batch["images"], "text_ids": batch["text_ids"]}))
    second = itnet.pool(itnet({"images": batch["images2"], "text_ids": batch["text_ids"]}))
    torch.testing.assert_close(paired(batch), paired.head(torch.cat([first, second], -1)), rtol=1e-5, atol=1e-5)
    swapped = paired({**batch, "images": batch["images2"], "images2": batch["images"]})
    assert not torch.allclose(swapped, paired(batch))  # the order of the pair matters (left, right)
    with pytest.raises(ValueError, match="image_pair_form must be one of"):
        dataclasses.replace(SMALL, image_pair_form="both")
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


def test_task_models_build_only_the_encoders_of_their_modalities():
    """An image classifier of tiny without the text and point encoders: the parameters those held are gone, the
    image path computes what the full model's does, and a text batch raises naming the text encoder."""
    full = create_model("tiny", task="classification", classes=10)
    images_only = create_model("tiny", task="classification", classes=10, modalities=["image"])
    text, points = full.itnet.encoder.text, full.itnet.encoder.points
    assert count_parameters(full).total - count_parameters(images_only).total == \
        count_parameters(text).total + count_parameters(points).total
    assert not any(name.startswith(("itnet.encoder.text", "itnet.encoder.points"))
                   for name, _ in images_only.named_parameters())
    images_only.load_state_dict({k: v for k, v in full.state_dict().items() if k in images_only.state_dict()})
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(images_only.eval()({"images": images}), full.eval()({"images": images}))
    with pytest.raises(ValueError, match=r"text batches need the text encoder, which this model does not build "
                                         r"\(modalities=\['image'\]\)"):
        images_only({"text_ids": torch.randint(7, 3000, (2, 5))})


def test_a_pretraining_model_builds_the_heads_its_modalities_serve():
    images_only = create_model(SMALL, modalities=["image"])
    assert images_only.mlm is images_only.itc is images_only.mpp is None and images_only.mpm is not None
    batch = pretraining_batch()
    assert set(images_only.losses({"images": batch["images"], "image_mask": batch["image_mask"]})) == {"mpm"}
    assert set(images_only.evaluation_outputs({"images": batch["images"]})) == {"image_features"}
    with pytest.raises(ValueError, match=r"image_text batches need the text encoder"):
        images_only.losses(batch)
    text_only = create_model(SMALL, modalities=["text"])
    assert text_only.mlm.decoder.weight is text_only.itnet.encoder.text.embedding.weight
    assert text_only.itc is text_only.mpm is text_only.mpp is None
    assert set(text_only.losses({"text_ids": batch["text_ids"], "mlm_labels": batch["mlm_labels"]})) == {"mlm"}
    for task, args in (("vqa", {"answers": 3}), ("nlvr2", {})):
        with pytest.raises(ValueError, match=rf"task '{task}' needs the image and text encoders; "
                                             r"modalities=\['image'\] lacks \['text'\]"):
            create_model(SMALL, task=task, modalities=["image"], **args)


def pair_batch(B: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sentence pairs as the tokenizer encodes them: <cls>=2 first <sep>=3 second <sep>, padded with 0."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 60, (B, 12), generator=generator)
    segments = torch.zeros(B, 12, dtype=torch.long)
    real = torch.ones(B, 12, dtype=torch.bool)
    for row in range(B):
        split, end = 3 + row, 10 + row % 3
        ids[row, 0], ids[row, split], ids[row, end - 1] = 2, 3, 3
        segments[row, split + 1:end] = 1
        real[row, end:] = False
    ids = torch.where(real, ids, 0)
    return {"text_ids": ids, "text_segment_ids": segments, "text_attention_mask": real}


def test_regression_predicts_one_value_per_sample_and_fits_sentence_pair_scores():
    """STS-B: sentence pairs (with segment ids) → one score each, MSE; a few steps fit a fixed batch."""
    torch.manual_seed(0)
    model = create_model(SMALL, task="regression", modalities=["text"], text_segments=2)
    assert isinstance(model, ITNetForRegression)
    batch = {**pair_batch(), "labels": torch.tensor([0.5, 4.2, 2.0, 3.1])}
    predictions = model(batch)
    assert predictions.shape == (4,)
    torch.testing.assert_close(model.loss(batch), torch.nn.functional.mse_loss(predictions, batch["labels"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(batch)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.2 * losses[0]
    assert model.itnet.encoder.text.segment_embedding.weight[1].abs().sum() > 0  # the segments learned apart
    with pytest.raises(ValueError, match=r"labels must be finite floats \(regression targets\), got torch.int64"):
        model.loss({**batch, "labels": torch.tensor([0, 4, 2, 3])})
    with pytest.raises(ValueError, match=r"classes must be >= 2, got 1 \(one output: the regression task"):
        create_model(SMALL, task="classification", classes=1)


def test_segment_ids_reach_the_model_and_start_neutral():
    """A classifier with text_segments=2 computes what it did without segment ids until the segment embedding
    moves; from then on the same tokens split differently give different outputs."""
    model = create_model(SMALL, task="classification", classes=3, modalities=["text"], text_segments=2).eval()
    batch = pair_batch()
    plain = {key: value for key, value in batch.items() if key != "text_segment_ids"}
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(plain), rtol=0, atol=0)
        model.itnet.encoder.text.segment_embedding.weight.normal_()
        moved = model(batch)
        resplit = model({**batch, "text_segment_ids": batch["text_segment_ids"].roll(1, dims=1)})
    assert not torch.allclose(moved, model(plain)) and not torch.allclose(moved, resplit)
