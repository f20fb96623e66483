"""NLVR2 on a small tree in the release's formats: the reader of every split and both places its files may be, the
images of an identifier (numbered train folders, a JPEG named .png, a missing image), identifiers, the errors bad
files get, accuracy and consistency, the predictions file and the layout writer."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itnet_scale.tasks import BENCHMARKS, get_benchmark
from itnet_scale.tasks.benchmark import Example, Split
from itnet_scale.tasks.imagenet import load_image
from itnet_scale.tasks.nlvr2 import NLVR2, Nlvr2Id, Nlvr2Item, consistency, write_nlvr2_layout
from tests.tasks.nlvr2_fixtures import (
    DEV,
    DISGUISED_PAIR,
    MISSING_PAIR,
    TEST1,
    TEST2,
    TRAIN,
    color,
    encoded,
    line,
    pair_seed,
    write_nlvr2_folder,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nlvr2_folder(tmp_path_factory.mktemp("nlvr2"))


def test_registered_with_its_settings() -> None:
    benchmark = get_benchmark("nlvr2")
    assert benchmark is NLVR2 and BENCHMARKS["nlvr2"] is NLVR2
    assert (benchmark.modality, benchmark.label_names, benchmark.primary_metric, benchmark.num_outputs) == (
        "image_pair_text", ("False", "True"), "accuracy", 2)
    assert (benchmark.train_split, benchmark.eval_splits, benchmark.test_splits) == (
        "train", ("validation",), ("test-P", "test-U"))


def test_every_split_with_its_images(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = NLVR2.read(root, "train")
    assert [(e.id, e.inputs["text"], e.label) for e in train.examples] == [
        (i, s, ("False", "True").index(label)) for i, s, label in TRAIN]
    assert train.examples[2].inputs["images"] == (root / "images/train/71/train-10171-0-img0.png",
                                                  root / "images/train/71/train-10171-0-img1.png")
    assert train.examples[3].inputs["images"][1] == root / "images/train/2/train-2-3-img1.png"
    assert train.skipped == {}

    with caplog.at_level(logging.WARNING, logger="itnet_scale.tasks.nlvr2"):
        dev = NLVR2.read(root, "validation")
    kept = [row for row in DEV if not row[0].startswith(MISSING_PAIR)]
    assert [(e.id, e.label) for e in dev.examples] == [(i, ("False", "True").index(label)) for i, _, label in kept]
    assert dev.skipped == {"missing image": 1}
    assert f"{MISSING_PAIR}-0 has no {MISSING_PAIR}-img1.png" in caplog.text
    assert dev.examples[0].inputs == {"images": (root / "dev/dev-850-0-img0.png", root / "dev/dev-850-0-img1.png"),
                                      "text": "All the bottles are from the same brand."}

    test_p = NLVR2.read(root, "test-P")
    assert [e.id for e in test_p.examples] == [i for i, _, _ in TEST1] and test_p.labelled
    assert test_p.examples[1].inputs["images"][0] == root / "images/test1/test1-0-2-img0.png"
    test_u = NLVR2.read(root, "test-U")
    assert [e.id for e in test_u.examples] == [i for i, _, _ in TEST2]
    assert not test_u.labelled and all(e.label is None for e in test_u.examples)
    with pytest.raises(ValueError, match="split 'test-U' has no labels"):
        NLVR2.evaluate_split(np.zeros((2, 2)), test_u)


def test_images_decode_by_content(root: Path) -> None:
    """The release's pair images: PNGs, and JPEGs named .png; all come out RGB showing what was written."""
    (example,) = [e for e in NLVR2.read(root, "validation").examples if e.id.startswith(DISGUISED_PAIR)]
    left, right = example.inputs["images"]
    assert left.suffix == ".png" and Image.open(left).format == "JPEG" and Image.open(right).format == "PNG"
    for side, path in enumerate((left, right)):
        image = load_image(path)
        expected = np.asarray(color(pair_seed(DISGUISED_PAIR, side)), dtype=np.int16)
        assert image.mode == "RGB" and image.size == (10, 8)
        assert np.abs(np.asarray(image, dtype=np.int16) - expected).mean() < 3


def test_json_in_the_root_and_dev_images_under_images(tmp_path: Path) -> None:
    """The other accepted places: ``root/<name>.json`` and ``root/images/dev/``."""
    root = write_nlvr2_folder(tmp_path / "nlvr2")
    (root / "data" / "dev.json").rename(root / "dev.json")
    (root / "images").mkdir(exist_ok=True)
    (root / "dev").rename(root / "images" / "dev")
    dev = NLVR2.read(root, "validation")
    assert len(dev.examples) == 4 and dev.examples[0].inputs["images"][0] == root / "images/dev/dev-850-0-img0.png"


def test_test_u_with_its_released_labels_is_scored(tmp_path: Path) -> None:
    root = write_nlvr2_folder(tmp_path / "nlvr2")
    (root / "data" / "test2.json").write_text(line("test2-189-0-0", "Seven bottles.", "True")
                                              + line("test2-189-3-1", "Three bottles.", "False"))
    test_u = NLVR2.read(root, "test-U")
    assert test_u.labels().tolist() == [1, 0]
    assert NLVR2.evaluate_split(np.array([[0.0, 1.0], [0.0, 1.0]]), test_u) == {"accuracy": 0.5,
                                                                                "consistency": 0.5}


def test_identifiers() -> None:
    parsed = Nlvr2Id.parse("dev-850-0-1")
    assert parsed == Nlvr2Id("dev", 850, 0, 1)
    assert parsed.image_names == ("dev-850-0-img0.png", "dev-850-0-img1.png")
    assert parsed.sentence_key == "dev-850-*-1" == Nlvr2Id.parse("dev-850-3-1").sentence_key
    assert Nlvr2Id.parse("train-10171-2-0").image_names[1] == "train-10171-2-img1.png"
    for bad in ("dev-850-0", "dev-850-a-1", "dev-850-0-1-2", "dev_850_0_1", "-850-0-1", "dev-850-0-img0", "", 850):
        with pytest.raises(ValueError, match=r"bad NLVR2 identifier .*expected <split>-<set>-<pair>-<sentence>"):
            Nlvr2Id.parse(bad)


def test_consistency_by_hand() -> None:
    """Three sentences: one with every pair right, one with one of three wrong, one single example wrong → 1/3."""
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0",   # sentence dev-1-*-0: all right
           "dev-1-0-1", "dev-1-3-1", "dev-1-2-1",   # sentence dev-1-*-1: one wrong
           "dev-2-0-0"]                             # sentence dev-2-*-0: its only example wrong
    correct = np.array([True, True, True, True, False, True, False])
    assert consistency(ids, correct) == pytest.approx(1 / 3)
    assert consistency(ids, np.ones(7, bool)) == 1.0 and consistency(ids, np.zeros(7, bool)) == 0.0
    # Sets and sentence numbers both tell sentences apart; the order of the examples does not matter.
    assert consistency(["dev-1-0-0", "dev-2-0-0", "dev-1-1-0"], [True, True, False]) == 0.5
    assert consistency(ids[::-1], correct[::-1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one correctness flag per identifier, got 7 identifiers and shape"):
        consistency(ids, correct[:3])
    with pytest.raises(ValueError, match="one correctness flag per identifier"):
        consistency([], np.zeros(0, bool))
    with pytest.raises(ValueError, match=r"bad NLVR2 identifier 'dev-1-0'"):
        consistency(["dev-1-0"], [True])


def test_accuracy_and_consistency_of_a_split() -> None:
    labels = [1, 0, 1, 0, 1, 1]
    split = Split("validation", [Example(i, {}, label) for i, label in zip(
        ["dev-5-0-0", "dev-5-1-0", "dev-5-0-1", "dev-5-1-1", "dev-6-2-0", "dev-6-3-0"], labels)])
    # Predicted: right, right, right, wrong, right, wrong.
    scores = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.0, 1.0], [0.9, 0.1]])
    # Sentences dev-5-*-0: both right; dev-5-*-1: one wrong; dev-6-*-0: one wrong.
    result = NLVR2.evaluate_split(scores, split)
    assert result == {"accuracy": pytest.approx(4 / 6), "consistency": pytest.approx(1 / 3)}
    assert NLVR2.evaluate_split(scores.argmax(-1), split) == NLVR2.evaluate_split(scores, split)
    assert NLVR2.evaluate(scores, np.array(labels)) == {"accuracy": pytest.approx(4 / 6)}


def test_the_predictions_file(tmp_path: Path) -> None:
    ids = ["test1-0-1-0", "test1-0-2-0", "test1-7-0-1"]
    path = NLVR2.write_submission(tmp_path / "out", "test-P", ids, np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]]))
    assert path == tmp_path / "out" / "nlvr2-test-P-predictions.csv"
    assert path.read_bytes() == b"test1-0-1-0,True\ntest1-0-2-0,False\ntest1-7-0-1,True\n"
    assert NLVR2.write_submission(tmp_path, "test-U", ["test2-1-0-0"], np.array([0])).read_bytes() == \
        b"test2-1-0-0,False\n"
    with pytest.raises(ValueError, match="3 predictions for 2 identifiers"):
        NLVR2.write_submission(tmp_path, "test-P", ids[:2], np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"class scores \[N, 2\] or classes \[N\], got shape \(3, 3\)"):
        NLVR2.write_submission(tmp_path, "test-P", ids, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"predicted classes must be 0 or 1, got \[2\]"):
        NLVR2.write_submission(tmp_path, "test-P", ids, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="bad NLVR2 identifier 'test1-0-1'"):
        NLVR2.write_submission(tmp_path, "test-P", ["test1-0-1", *ids[1:]], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown NLVR2 split 'test'"):
        NLVR2.write_submission(tmp_path, "test", ids, np.zeros((3, 2)))


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


# (what is broken, the split read, the error, a pattern naming the file (and line) at fault)
ERRORS = [
    ("a file cut off mid-line", lambda r: append(r / "data/dev.json", '{"identifier": "dev-9-0-0", "sent'),
     "validation", ValueError, r"data/dev\.json:6: not a JSON object \(Unterminated string"),
    ("a line that is a list", lambda r: append(r / "data/dev.json", "[1, 2]\n"), "validation", ValueError,
     r"dev\.json:6: expected a JSON object, got list"),
    ("no identifier", lambda r: append(r / "data/dev.json", '{"sentence": "x", "label": "True"}\n'), "validation",
     ValueError, r"dev\.json:6: 'identifier' must be a non-empty string, got None"),
    ("no sentence", lambda r: append(r / "data/test1.json", '{"identifier": "test1-5-0-0", "label": "True"}\n'),
     "test-P", ValueError, r"test1\.json:3: 'sentence' must be a non-empty string"),
    ("an identifier without its sentence number", lambda r: append(r / "data/dev.json", line("dev-9-0", "x", "True")),
     "validation", ValueError, r"dev\.json:6: bad NLVR2 identifier 'dev-9-0'"),
    ("an identifier of another split", lambda r: append(r / "data/dev.json", line("train-9-0-0", "x", "True")),
     "validation", ValueError, r"dev\.json:6: identifier train-9-0-0 is not of dev\.json \(expected dev-\.\.\.\)"),
    ("an identifier twice", lambda r: append(r / "data/dev.json", line("dev-850-0-0", "x", "True")), "validation",
     ValueError, r"dev\.json:6: identifier dev-850-0-0 is also on line 1"),
    ("a lower-case label", lambda r: append(r / "data/dev.json", line("dev-9-0-0", "x", "true")), "validation",
     ValueError, r"dev\.json:6: label must be one of \['False', 'True'\], got 'true'"),
    ("a boolean label", lambda r: append(r / "data/train.json", line("train-9-0-0", "x", True)), "train",
     ValueError, r"train\.json:5: label must be one of .*got True"),
    ("no dev.json", lambda r: (r / "data/dev.json").unlink(), "validation", FileNotFoundError,
     r"dev\.json: no such NLVR2 file \(looked for .*data/dev\.json, .*/dev\.json\)"),
    ("no test2 images", lambda r: shutil.rmtree(r / "test2"), "test-U", FileNotFoundError,
     r"no NLVR2 image folder for test-U \(looked for .*images/test2 and .*/test2\)"),
    ("an empty file", lambda r: (r / "data/test1.json").write_text("\n"), "test-P", ValueError,
     r"test1\.json: no examples"),
    ("no image of any example", lambda r: [p.unlink() for p in (r / "images/test1").iterdir()], "test-P",
     ValueError, r"test1\.json: none of its 2 examples has both images in .*images/test1"),
    ("one image in two train folders", lambda r: shutil.copy(r / "images/train/2/train-2-3-img0.png",
                                                             r / "images/train/7/train-2-3-img0.png"),
     "train", ValueError, r"train/7/train-2-3-img0\.png: image train-2-3-img0\.png is also .*train/2/train-2-3-img0"),
    ("an unknown split", lambda r: None, "dev", ValueError,
     r"unknown NLVR2 split 'dev'; expected one of \['train', 'validation', 'test-P', 'test-U'\]"),
]


@pytest.mark.parametrize(("change", "split", "error", "pattern"), [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_bad_files_raise_naming_them(tmp_path: Path, change, split: str, error: type, pattern: str) -> None:
    root = write_nlvr2_folder(tmp_path / "nlvr2")
    (root / "images/train/7").mkdir()
    change(root)
    with pytest.raises(error, match=pattern):
        NLVR2.read(root, split)


def test_write_nlvr2_layout_writes_the_release_layout(tmp_path: Path) -> None:
    root = tmp_path / "derived"
    images = [np.full((6, 9, 3), 40 * k, np.uint8) for k in range(4)]
    jpeg = encoded(color(3), "JPEG")
    source = tmp_path / "photo.jpg"
    source.write_bytes(encoded(color(4), "JPEG"))
    train = [Nlvr2Item("train-105-0-0", "Both images show dogs.", True, images[0], images[1], {"writer": "12"}),
             Nlvr2Item("train-105-0-1", "One image shows a cat.", False, images[0], images[1]),
             Nlvr2Item("train-7-1-0", "The right image is darker.", False, Image.fromarray(images[2]), jpeg)]
    path = write_nlvr2_layout(root, "train", train)
    assert path == root / "data" / "train.json"
    records = [json.loads(text) for text in path.read_text().splitlines()]
    assert records[0] == {"writer": "12", "identifier": "train-105-0-0", "sentence": "Both images show dogs.",
                          "label": "True", "directory": 5}
    assert [r["directory"] for r in records] == [5, 5, 7] and records[1]["label"] == "False"
    # Train images in numbered folders, one file per pair; bytes given are written as they are (a JPEG named .png).
    assert sorted(p.relative_to(root).as_posix() for p in (root / "images").rglob("*.png")) == [
        "images/train/5/train-105-0-img0.png", "images/train/5/train-105-0-img1.png",
        "images/train/7/train-7-1-img0.png", "images/train/7/train-7-1-img1.png"]
    assert (root / "images/train/7/train-7-1-img1.png").read_bytes() == jpeg
    write_nlvr2_layout(root, "test-U", [Nlvr2Item("test2-3-0-0", "A dog.", None, source, images[3])])
    assert "label" not in json.loads((root / "data/test2.json").read_text())

    read = NLVR2.read(root, "train")
    assert [(e.id, e.inputs["text"], e.label) for e in read.examples] == [
        (item.identifier, item.sentence, int(item.label)) for item in train]
    assert np.array_equal(np.asarray(load_image(read.examples[0].inputs["images"][1])), images[1])
    test_u = NLVR2.read(root, "test-U")
    assert not test_u.labelled and test_u.examples[0].inputs["images"][0].read_bytes() == source.read_bytes()
    assert np.asarray(load_image(test_u.examples[0].inputs["images"][0])).shape == (8, 10, 3)


def test_write_nlvr2_layout_checks_before_writing(tmp_path: Path) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    good = Nlvr2Item("dev-1-0-0", "A sentence.", True, image, image)
    bad = [([Nlvr2Item("train-1-0-0", "x", True, image, image)], ValueError,
             r"validation\[0\] \('train-1-0-0'\): a validation identifier starts with dev-"),
           ([good, good], ValueError, r"validation\[1\] \('dev-1-0-0'\): identifier written twice"),
           ([Nlvr2Item("dev-1-0", "x", True, image, image)], ValueError, "bad NLVR2 identifier 'dev-1-0'"),
           ([Nlvr2Item("dev-1-0-0", " ", True, image, image)], ValueError, "the sentence must be a non-empty string"),
           ([Nlvr2Item("dev-1-0-0", "x", "True", image, image)], ValueError, "label must be True, False or None"),
           ([Nlvr2Item("dev-1-0-0", "x", True, image, image, {"label": "x"})], ValueError,
            r"fields may not set \['label'\]"),
           ([good, Nlvr2Item("dev-1-0-1", "x", True, image, image + 1)], ValueError,
            r"validation\[1\] \('dev-1-0-1'\): gives other images for pair dev-1-0-img1\.png than dev-1-0-0"),
           ([Nlvr2Item("dev-1-0-0", "x", True, image.astype(np.float32), image)], ValueError,
            r"dev-1-0-img0\.png: an image array must be uint8"),
           ([Nlvr2Item("dev-1-0-0", "x", True, "a.png", image)], TypeError, "expected a PIL image"),
           ([], ValueError, "validation: no items to write")]
    for items, error, pattern in bad:
        with pytest.raises(error, match=pattern):
            write_nlvr2_layout(tmp_path / "new", "validation", items)
        assert not (tmp_path / "new").exists()
    write_nlvr2_layout(tmp_path / "new", "validation", [good])
    with pytest.raises(FileExistsError, match=r"data/dev\.json: already exists"):
        write_nlvr2_layout(tmp_path / "new", "validation", [good])
