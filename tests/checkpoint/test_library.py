"""The library format: save/load of every model class, sharding and the index, tied weights, cross-task loads,
``load_pretrained_weights`` (``init_from``), no unpickling, and bad folders rejected naming the file and tensor."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from itnet_scale.checkpoint import library
from itnet_scale.checkpoint.library import (
    CONFIG_FILE,
    INDEX_FILE,
    WEIGHTS_FILE,
    LibraryFolder,
    load_pretrained_weights,
    parse_size,
    plan_shards,
)
from itnet_scale.models import (
    ITNetForClassification,
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForVQA,
    ITNetModel,
    ModelConfig,
    create_model,
)
from tests.checkpoint.permissions import UMASKS, assert_honours_umask, umask

SMALL = ModelConfig(dim=32, depth=2, heads=2, vocab_size=60, image_channels=1, patch_size=4, point_tokens=8,
                    point_group_size=4, point_hidden=16, contrastive_dim=16, layer={"kernel_width": 4},
                    layers={"0": {"support": "window", "support_size": 3.0}})
MODELS = {"backbone": {}, "pretraining": {}, "classification": {"classes": 5}, "regression": {}, "vqa": {"answers": 7},
          "nlvr2": {}}


@pytest.fixture(autouse=True)
def _eager_tiles(monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (2, 9), generator=generator)
    images = torch.randn(2, 1, 16, 16, generator=generator)
    return {"images": images, "images2": images.flip(-1), "text_ids": ids}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    one, two = a.state_dict(), b.state_dict()
    assert list(one) == list(two)
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.parametrize("task", list(MODELS))
def test_every_model_class_round_trips(task, tmp_path):
    """save_pretrained → from_pretrained gives the same class, label count, weights and outputs; config.yaml is
    the omegaconf LibraryConfig (task, class, labels, the ModelConfig)."""
    model = create_model(SMALL, task=task, **MODELS[task]).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    saved = OmegaConf.load(tmp_path / "m" / CONFIG_FILE)
    assert saved.task == task and saved.model_class == type(model).__name__ and saved.model.dim == 32
    assert saved.labels == next(iter(MODELS[task].values()), None)
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model)
    assert_same_state(model, loaded)
    inputs = {k: v for k, v in batch().items() if task == "nlvr2" or k != "images2"}
    with torch.no_grad():
        want, got = model(inputs), loaded(inputs)
    if task in ("backbone",):
        want, got = want.hidden, got.hidden
    if task == "pretraining":
        want, got = model.itnet(inputs).hidden, loaded.itnet(inputs).hidden
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_tied_weights_are_stored_once_and_tied_again(tmp_path):
    model = create_model(SMALL)
    model.save_pretrained(tmp_path / "m")
    folder = LibraryFolder(tmp_path / "m")
    assert "mlm.decoder.weight" not in folder.tensors and "itnet.encoder.text.embedding.weight" in folder.tensors
    assert folder.config.tied_weights == {"mlm.decoder.weight": "itnet.encoder.text.embedding.weight"}
    loaded = ITNetForPretraining.from_pretrained(tmp_path / "m")
    assert loaded.mlm.decoder.weight is loaded.itnet.encoder.text.embedding.weight
    untied = create_model(SMALL, tie_mlm_decoder=False)
    untied.save_pretrained(tmp_path / "untied")
    assert "mlm.decoder.weight" in LibraryFolder(tmp_path / "untied").tensors
    assert_same_state(untied, ITNetForPretraining.from_pretrained(tmp_path / "untied"))


def test_sharding_writes_a_hugging_face_index(tmp_path):
    """Above max_shard_size the tensors go into model-0000i-of-0000n.safetensors, in order, none over the limit
    unless alone; the index holds the weight map and the total size."""
    model = create_model(SMALL)
    model.save_pretrained(tmp_path / "m", max_shard_size="40KB")
    index = json.loads((tmp_path / "m" / INDEX_FILE).read_text())
    files = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert set(index["weight_map"].values()) == set(files)
    stored = {n: t for n, t in model.state_dict().items() if n != "mlm.decoder.weight"}
    assert set(index["weight_map"]) == set(stored)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    for file in files:
        held = [stored[n] for n, f in index["weight_map"].items() if f == file]
        assert len(held) == 1 or sum(t.numel() * t.element_size() for t in held) <= 40_000, file
    assert_same_state(model, ITNetForPretraining.from_pretrained(tmp_path / "m"))
    assert parse_size("1GiB") == 2**30 and parse_size("2GB") == 2 * 10**9 and parse_size(123) == 123
    with pytest.raises(ValueError, match="bad size"):
        parse_size("lots")
    big = library.TensorSpec("big", (100,), torch.float32)
    assert [len(s) for s in plan_shards([big, big, big], 800)] == [2, 1]
    assert [len(s) for s in plan_shards([big], 10)] == [1]  # alone in its shard


@pytest.mark.parametrize("value", UMASKS)
def test_saved_folders_honour_the_umask(tmp_path, value):
    """The folder, its shards, the index and config.yaml get the umask's permissions (0755/0644 under 022), not
    the 0700/0600 of temporary files, so that a team sharing a group can read them."""
    with umask(value):
        create_model(SMALL, task="backbone").save_pretrained(tmp_path / "m")
        create_model(SMALL).save_pretrained(tmp_path / "m", max_shard_size="50KB", overwrite=True)
    assert (tmp_path / "m" / INDEX_FILE).is_file()
    assert_honours_umask(tmp_path / "m", value)


def test_dtype_casts_floating_point_weights(tmp_path):
    model = create_model(SMALL, task="backbone")
    model.save_pretrained(tmp_path / "m", dtype="bf16")
    folder = LibraryFolder(tmp_path / "m")
    assert folder.config.dtype == "bfloat16" and {t.dtype for t in folder.tensors.values()} == {"BF16"}
    loaded = ITNetModel.from_pretrained(tmp_path / "m")
    assert loaded.encoder.text.embedding.weight.dtype == torch.float32
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.bfloat16().float()), name
    assert ITNetModel.from_pretrained(tmp_path / "m", dtype="bf16").encoder.text.embedding.weight.dtype == \
        torch.bfloat16


def test_task_models_take_the_backbone_of_another_task(tmp_path, caplog):
    """A classifier (or VQA, NLVR2) from a pretraining folder: itnet.* loaded, a fresh head, a log line saying so;
    ITNetModel reads the backbone of any folder; a backbone folder starts every head fresh."""
    pretraining = create_model(SMALL)
    pretraining.save_pretrained(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        classifier = ITNetForClassification.from_pretrained(tmp_path / "p", classes=3, drop_path=0.1)
    assert "fresh heads: head (not in the folder)" in caplog.text and "pretraining folder" in caplog.text
    assert classifier.head.fc.out_features == 3 and classifier.itnet.config.drop_path == 0.1
    assert_same_state(pretraining.itnet, classifier.itnet)
    backbone = ITNetModel.from_pretrained(tmp_path / "p")
    assert_same_state(pretraining.itnet, backbone)
    assert_same_state(pretraining.itnet, ITNetForVQA.from_pretrained(tmp_path / "p", answers=4).itnet)
    assert_same_state(pretraining.itnet, ITNetForNLVR2.from_pretrained(tmp_path / "p").itnet)
    classifier.save_pretrained(tmp_path / "c")
    assert_same_state(pretraining.itnet, ITNetModel.from_pretrained(tmp_path / "c"))
    same = ITNetForClassification.from_pretrained(tmp_path / "c")  # its own folder: whole, head included
    assert_same_state(classifier, same)
    backbone.save_pretrained(tmp_path / "b")
    assert_same_state(backbone, ITNetForPretraining.from_pretrained(tmp_path / "b").itnet)
    with pytest.raises(ValueError, match="give ITNetForClassification its classes="):
        ITNetForClassification.from_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="takes no answers"):
        ITNetForClassification.from_pretrained(tmp_path / "p", answers=3)


def test_load_pretrained_weights_matches_the_backbone_exactly(tmp_path, caplog):
    """init_from: the backbone must match exactly (a shape or name mismatch names the file and the tensor); heads
    load when present with the same shapes, and stay as initialized otherwise (logged)."""
    source = create_model(SMALL)
    source.save_pretrained(tmp_path / "p")
    target = create_model(SMALL)
    report = load_pretrained_weights(target, tmp_path / "p")
    assert_same_state(source, target) and not report.fresh_heads
    create_model(SMALL, task="backbone").save_pretrained(tmp_path / "b")
    torch.manual_seed(1)
    target = create_model(SMALL)
    heads = {n: t.clone() for n, t in target.state_dict().items() if not n.startswith("itnet.")}
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        report = load_pretrained_weights(target, tmp_path / "b")
    assert set(report.fresh_heads) == {"mlm", "itc", "mpm", "mpp"} and "fresh heads" in caplog.text
    assert_same_state(ITNetModel.from_pretrained(tmp_path / "b"), target.itnet)
    for name, value in heads.items():
        if name != "mlm.decoder.weight":  # tied to the (loaded) text embedding
            assert torch.equal(target.state_dict()[name], value), name
    classifier = create_model(SMALL, task="classification", classes=4)
    classifier.save_pretrained(tmp_path / "c")
    other = create_model(SMALL, task="classification", classes=6)
    report = load_pretrained_weights(other, tmp_path / "c")
    assert "head" in report.fresh_heads and "[4, 32] in the folder, [6, 32] here" in report.fresh_heads["head"]
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'itnet\.encoder\.text\.embedding\.weight' "
                                         r"has shape \[60, 32\], not the \[70, 32\] of the model it is loaded into"):
        load_pretrained_weights(create_model(SMALL, vocab_size=70), tmp_path / "p")
    with pytest.raises(ValueError, match=r"no file holds tensor 'itnet\.backbone\.blocks\.2\.norm1\.weight'"):
        load_pretrained_weights(create_model(SMALL, depth=3), tmp_path / "p")
    with pytest.raises(ValueError, match=r"tensor 'itnet\.backbone\.blocks\.1\..*' is not a parameter of the model"):
        load_pretrained_weights(create_model(SMALL, depth=1, layers={}), tmp_path / "p")


def test_a_model_with_fewer_encoders_skips_the_others_and_logs_them(tmp_path, caplog):
    """Fine-tuning on one modality: an image classifier (or a text backbone, or an image-only pretraining model)
    from a folder of every encoder loads what it builds and skips the rest, logged with the tensor counts; a weight
    it needs that the folder lacks is still an error."""
    pretraining = create_model(SMALL)
    pretraining.save_pretrained(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        classifier = ITNetForClassification.from_pretrained(tmp_path / "p", classes=10, modalities=["image"])
    text_tensors, point_tensors = (len(list(getattr(pretraining.itnet.encoder, name).state_dict())) for name in
                                   ("text", "points"))
    assert (f"skipped the weights of parts this model does not build (its modalities): itnet.encoder.points "
            f"({point_tensors} tensors), itnet.encoder.text ({text_tensors} tensors)") in caplog.text
    assert classifier.itnet.encoder.text is None and classifier.itnet.encoder.points is None
    wanted = {k: v for k, v in pretraining.itnet.state_dict().items() if k in classifier.itnet.state_dict()}
    assert list(wanted) == list(classifier.itnet.state_dict())
    for name, value in classifier.itnet.state_dict().items():
        assert torch.equal(value, wanted[name]), name
    images = batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(classifier.eval().itnet({"images": images}).hidden,
                                   pretraining.eval().itnet({"images": images}).hidden, rtol=0, atol=0)
    text_backbone = ITNetModel.from_pretrained(tmp_path / "p", modalities=["text"])
    assert text_backbone.encoder.image is None and text_backbone.encoder.text is not None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        images_only = ITNetForPretraining.from_pretrained(tmp_path / "p", modalities=["image"])  # same task
    assert "itc (" in caplog.text and "mlm (" in caplog.text and "mpp (" in caplog.text
    assert torch.equal(images_only.mpm.decoder.weight, pretraining.mpm.decoder.weight)
    report = load_pretrained_weights(create_model(SMALL, modalities=["points"]), tmp_path / "p")
    assert set(report.skipped) == {"itnet.encoder.image", "itnet.encoder.text"}
    classifier.save_pretrained(tmp_path / "images")
    with pytest.raises(ValueError, match=r"images: no file holds tensor 'itnet\.encoder\.text\.type_embedding' \[32\], "
                                         r"which the model it is loaded into has"):
        load_pretrained_weights(create_model(SMALL, task="classification", classes=10), tmp_path / "images")


@pytest.mark.parametrize("stem", ["patchify", "conv"])
def test_a_gray_pretrained_stem_adapts_to_three_channels_and_back(stem, tmp_path, caplog):
    """A model pretrained on 1-channel images loads into image_channels=3 (timm's adapt_input_conv: the gray
    weight repeated, / 3): on a gray image replicated to 3 channels it computes what the original computes on the
    gray image; and back (3 → 1: summed). The log names the weight and both shapes."""
    gray = create_model(SMALL, task="backbone", image_stem=stem).eval()
    gray.save_pretrained(tmp_path / "gray")
    name = "encoder.image." + ("stem.weight" if stem == "patchify" else "stem.0.weight")
    stored = list(gray.state_dict()[name].shape)
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        rgb = ITNetModel.from_pretrained(tmp_path / "gray", image_channels=3).eval()
    wanted = [stored[0], 3, *stored[2:]]
    assert f"adapted {name} from {stored} to {wanted} (input channels 1 → 3" in caplog.text
    images = batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(rgb({"images": images.expand(-1, 3, -1, -1)}).hidden,
                                   gray({"images": images}).hidden, rtol=1e-5, atol=1e-5)
        rgb.save_pretrained(tmp_path / "rgb")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
            back = ITNetModel.from_pretrained(tmp_path / "rgb", image_channels=1).eval()
        assert f"adapted {name} from {wanted} to {stored} (input channels 3 → 1" in caplog.text
        torch.testing.assert_close(back({"images": images}).hidden, gray({"images": images}).hidden,
                                   rtol=1e-5, atol=1e-5)
    # a pretraining model too: the masked patch head (its output is per channel) starts fresh, logged
    create_model(SMALL, image_stem=stem).save_pretrained(tmp_path / "p")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        ITNetForPretraining.from_pretrained(tmp_path / "p", image_channels=3)
    assert "fresh heads: mpm ('mpm.decoder.weight' is [16, 32] in the folder, [48, 32] here)" in caplog.text


def test_the_segment_embedding_starts_at_zero_from_a_folder_without_it(tmp_path, caplog):
    """GLUE pairs: a classifier with text_segments=2 from a pretraining folder (no segment embedding) keeps the
    embedding at zero (logged), so on a pair batch it computes what the pretrained backbone computes; a folder that
    has one does not load into a model without it."""
    pretraining = create_model(SMALL).eval()
    pretraining.save_pretrained(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="itnet_scale.checkpoint.library"):
        pairs = ITNetForClassification.from_pretrained(tmp_path / "p", classes=3, text_segments=2,
                                                       modalities=["text"]).eval()
    assert ("not in the folder, kept at their initialization (zero: the pretrained model's function is unchanged): "
            "itnet.encoder.text.segment_embedding.weight") in caplog.text
    assert not pairs.itnet.encoder.text.segment_embedding.weight.any()
    ids = torch.tensor([[2, 11, 12, 3, 14, 15, 16, 3], [2, 21, 3, 23, 24, 3, 0, 0]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(pairs.itnet({"text_ids": ids, "text_segment_ids": segments}).hidden,
                                   pretraining.itnet({"text_ids": ids}).hidden, rtol=0, atol=0)
    pairs.save_pretrained(tmp_path / "pairs")
    again = ITNetForClassification.from_pretrained(tmp_path / "pairs")  # its own folder: whole
    assert again.itnet.config.text_segments == 2 and again.itnet.encoder.text.segment_embedding is not None
    with pytest.raises(ValueError, match=r"tensor 'itnet\.encoder\.text\.segment_embedding\.weight' is not a "
                                         r"parameter of the model it is loaded into"):
        load_pretrained_weights(create_model(SMALL, task="classification", classes=3, modalities=["text"]),
                                tmp_path / "pairs")


def test_a_model_saved_at_32x32_and_short_text_runs_at_48x48_and_longer_text(tmp_path):
    """Positions are coordinates, not table rows: a model built and trained at 32×32 images and 9 text tokens
    loads and runs at 48×48 (144 patches) and 40 tokens, finite, with the right shapes; its window layer still
    sees |Δ| ≤ 3 patches (a smaller share of the larger image)."""
    torch.manual_seed(0)
    model = create_model(SMALL, task="classification", classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    small = {"images": torch.randn(2, 1, 32, 32), "text_ids": torch.randint(7, 60, (2, 9)),
             "labels": torch.tensor([1, 3])}
    model.loss(small).backward()
    optimizer.step()
    model.save_pretrained(tmp_path / "c")
    loaded = ITNetForClassification.from_pretrained(tmp_path / "c").eval()
    assert loaded.itnet.backbone.blocks[0].mixer.spec.support_size == 3.0
    large = {"images": torch.randn(2, 1, 48, 48), "text_ids": torch.randint(7, 60, (2, 40))}
    with torch.no_grad():
        output = loaded.itnet(large)
        logits = loaded(large)
        image_logits = loaded({"images": large["images"]})
    assert output.hidden.shape == (2, 144 + 40, 32) and output.pos[0, :144, 1:].max() == 11
    assert output.pos[0, 144:, 0].tolist() == list(range(1, 41))
    assert logits.shape == image_logits.shape == (2, 5)
    assert torch.isfinite(output.hidden).all() and torch.isfinite(logits).all() and torch.isfinite(image_logits).all()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """config.yaml is YAML and the weights safetensors: neither torch.load nor pickle runs during a load."""
    create_model(SMALL).save_pretrained(tmp_path / "m", max_shard_size="50KB")

    def refuse(*args, **kwargs):
        raise AssertionError("a load unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    ITNetForPretraining.from_pretrained(tmp_path / "m")
    load_pretrained_weights(create_model(SMALL), tmp_path / "m")


def test_bad_folders_are_rejected_naming_the_file_and_tensor(tmp_path):
    create_model(SMALL).save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    create_model(SMALL).save_pretrained(tmp_path / "single")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))

    missing = tmp_path / "missing"
    _copy(tmp_path / "sharded", missing)
    (missing / shards[1].name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shards[1].name}: missing shard; {INDEX_FILE} maps \d+ tensors "
                                                r"to it \(e\.g\. 'itnet\."):
        ITNetForPretraining.from_pretrained(missing)

    for name in ("single", "sharded"):
        truncated = tmp_path / f"truncated-{name}"
        _copy(tmp_path / name, truncated)
        victim = sorted(truncated.glob("*.safetensors"))[-1]
        victim.write_bytes(victim.read_bytes()[:-100])
        with pytest.raises(ValueError, match=rf"{victim.name}: unreadable safetensors file \(truncated or corrupt"):
            ITNetForPretraining.from_pretrained(truncated)
        header = tmp_path / f"header-{name}"
        _copy(tmp_path / name, header)
        victim = sorted(header.glob("*.safetensors"))[0]
        victim.write_bytes(victim.read_bytes()[:40])
        with pytest.raises(ValueError, match=rf"{victim.name}: unreadable safetensors file"):
            LibraryFolder(header)

    index = tmp_path / "index"
    _copy(tmp_path / "sharded", index)
    weight_map = json.loads((index / INDEX_FILE).read_text())
    first = next(iter(weight_map["weight_map"]))
    other = next(f for f in weight_map["weight_map"].values() if f != weight_map["weight_map"][first])
    weight_map["weight_map"][first] = other
    (index / INDEX_FILE).write_text(json.dumps(weight_map))
    with pytest.raises(ValueError, match=rf"{other}: {INDEX_FILE} maps tensor '{first}' to this file, which does "
                                         "not hold it"):
        LibraryFolder(index)

    for change, message in (({"dim": 48, "heads": 2}, r"tensor '.*' has shape \[.*\], not the \[.*48.*\] of the model "
                                                      r".*config\.yaml describes"),
                            ({"depth": 3}, r"no file holds tensor 'itnet\.backbone\.blocks\.2\."),
                            ({"depth": 1, "layers": {}}, r"model\.safetensors: tensor 'itnet\.backbone\.blocks\.1\..*'"
                                                         r" is not a parameter of the model .*config\.yaml describes"),
                            ({"contrastive_dim": 8}, r"tensor 'itc\.image_proj\.weight' has shape \[16, 32\], "
                                                     r"not the \[8, 32\]")):
        wrong = tmp_path / f"wrong-{'-'.join(change)}"
        _copy(tmp_path / "single", wrong)
        config = OmegaConf.load(wrong / CONFIG_FILE)
        config.model = OmegaConf.merge(config.model, change)
        (wrong / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
        with pytest.raises(ValueError, match=message):
            ITNetForPretraining.from_pretrained(wrong)

    bad_key = tmp_path / "bad-key"
    _copy(tmp_path / "single", bad_key)
    (bad_key / CONFIG_FILE).write_text((bad_key / CONFIG_FILE).read_text().replace("dim: 32", "dimm: 32"))
    with pytest.raises(ValueError, match=r"config\.yaml: bad library config key 'model\.dimm'"):
        ITNetForPretraining.from_pretrained(bad_key)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such model folder"):
        ITNetForPretraining.from_pretrained(tmp_path / "nowhere")


def test_writes_are_atomic_and_never_overwrite_unasked(tmp_path, monkeypatch):
    """An existing folder is refused (untouched) unless overwrite; a write that fails midway leaves neither a
    folder nor a temporary one; overwrite replaces the folder whole."""
    model = create_model(SMALL)
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / WEIGHTS_FILE).read_bytes()
    with pytest.raises(FileExistsError, match=r"m exists; choose another output folder or overwrite it"):
        create_model(SMALL, task="backbone").save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / WEIGHTS_FILE).read_bytes() == before

    calls = {"n": 0}
    real = library.save_file

    def failing(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(library, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "new", max_shard_size="50KB")
    with pytest.raises(OSError, match="disk full"):
        calls["n"] = 0
        model.save_pretrained(tmp_path / "m", max_shard_size="50KB", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no output, no temporary folder, m as it was
    assert (tmp_path / "m" / WEIGHTS_FILE).read_bytes() == before
    monkeypatch.setattr(library, "save_file", real)
    backbone = create_model(SMALL, task="backbone")
    backbone.save_pretrained(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert_same_state(backbone, ITNetModel.from_pretrained(tmp_path / "m"))


def _copy(source: Path, target: Path) -> None:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
