"""The ImageNet benchmark on hand-written trees in the real layouts (the Kaggle download, a prepared tree with val in
class folders, a flat train folder), the files ImageNet really holds (CMYK and grayscale JPEGs, a PNG named .JPEG),
its errors, metrics, submission file, shards and the tree writer."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itnet_scale.data.shards import read_index, read_shard
from itnet_scale.tasks import get_benchmark
from itnet_scale.tasks.imagenet import (
    IMAGENET,
    ImageNet,
    load_image,
    write_imagenet_layout,
    write_imagenet_shards,
)

WNIDS = ("n01440764", "n01443537", "n01484850")
# The first lines of the real LOC_synset_mapping.txt (a fourth class the fixture's train set does not hold).
MAPPING = """n01440764 tench, Tinca tinca
n01443537 goldfish, Carassius auratus
n01484850 great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias
n01491361 tiger shark, Galeocerdo cuvieri
"""
# As the real file: boxes after the wnid, a trailing space, rows out of order; image 3's first box names goldfish
# and its second tench (the label is the first); image 9 has no file (a partial val folder).
VAL_SOLUTION = """ImageId,PredictionString
ILSVRC2012_val_00000002,n01484850 10 12 200 180 \r
ILSVRC2012_val_00000001,n01440764 0 0 7 7 n01440764 2 2 5 5 \r
ILSVRC2012_val_00000003,n01443537 1 1 6 6 n01440764 0 0 3 3 \r
ILSVRC2012_val_00000004,n01440764 3 4 5 6 \r
ILSVRC2012_val_00000009,n01443537 0 0 1 1 \r
"""
VAL_LABELS = {"ILSVRC2012_val_00000001": 0, "ILSVRC2012_val_00000002": 2, "ILSVRC2012_val_00000003": 1,
              "ILSVRC2012_val_00000004": 0}


def color(seed: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    """A smooth RGB test image that differs per seed (JPEG keeps it within a few levels)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    ramp = np.linspace(0, 30, size[0] * size[1]).reshape(size[1], size[0], 1)
    return Image.fromarray(np.clip(base + ramp, 0, 255).astype(np.uint8))


def save(image: Image.Image, path: Path, format: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=format, quality=95)
    return path


# Training files: (wnid, file name); suffixes in every case the real and prepared sets use.
TRAIN_FILES = [("n01440764", "n01440764_10026.JPEG"), ("n01440764", "n01440764_10027.JPEG"),
               ("n01443537", "n01443537_2.jpeg"), ("n01443537", "n01443537_3.png"), ("n01484850", "n01484850_7.JPG")]


def write_kaggle_download(base: Path) -> Path:
    """The Kaggle download's layout: LOC_* files beside ILSVRC/, images under ILSVRC/Data/CLS-LOC."""
    download = base / "imagenet-object-localization-challenge"
    images = download / "ILSVRC" / "Data" / "CLS-LOC"
    for number, (wnid, name) in enumerate(TRAIN_FILES):
        save(color(number), images / "train" / wnid / name, "PNG" if name.endswith(".png") else "JPEG")
    (images / "train" / "n01484850" / "notes.txt").write_text("not an image")
    for number in range(1, 5):
        save(color(10 + number), images / "val" / f"ILSVRC2012_val_{number:08d}.JPEG")
    for number in (1, 2):
        save(color(20 + number), images / "test" / f"ILSVRC2012_test_{number:08d}.JPEG")
    (download / "LOC_val_solution.csv").write_bytes(VAL_SOLUTION.encode())
    (download / "LOC_synset_mapping.txt").write_text(MAPPING)
    return download


def images_of(download: Path) -> Path:
    return download / "ILSVRC" / "Data" / "CLS-LOC"


@pytest.mark.parametrize("where", ["download", "CLS-LOC"])
def test_the_kaggle_download_from_its_folder_or_its_image_folder(tmp_path: Path, where: str) -> None:
    download = write_kaggle_download(tmp_path)
    root = download if where == "download" else images_of(download)
    assert get_benchmark("imagenet") is IMAGENET
    benchmark = IMAGENET.for_root(root)
    assert benchmark.label_names == WNIDS and benchmark.num_outputs == 3 and not benchmark.regression
    assert benchmark.descriptions[0] == "tench, Tinca tinca" and benchmark.descriptions[2].startswith("great white")

    train = benchmark.read(root, "train")
    assert [e.id for e in train.examples] == [Path(name).stem for _, name in TRAIN_FILES]
    assert train.labels().tolist() == [0, 0, 1, 1, 2]
    assert train.examples[3].inputs["image"] == images_of(download) / "train" / "n01443537" / "n01443537_3.png"
    assert train.skipped == {"not an image file": 1}

    val = benchmark.read(root, "validation")
    assert {e.id: e.label for e in val.examples} == VAL_LABELS
    assert [e.id for e in val.examples] == sorted(VAL_LABELS)
    assert val.skipped == {"LOC_val_solution.csv row without an image": 1}
    assert np.asarray(load_image(val.examples[1].inputs["image"])).mean() == pytest.approx(
        np.asarray(color(12)).mean(), abs=3)

    test = benchmark.read(root, "test")
    assert [e.id for e in test.examples] == ["ILSVRC2012_test_00000001", "ILSVRC2012_test_00000002"]
    assert not test.labelled and all(e.label is None for e in test.examples)
    # The registered benchmark reads as well (it finds the classes itself).
    assert IMAGENET.read(root, "validation").examples == val.examples


def test_a_prepared_tree_with_val_in_class_folders_and_the_mapping_one_level_up(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "imagenet"
    for number, (wnid, name) in enumerate(TRAIN_FILES):
        save(color(number), root / "train" / wnid / name, "PNG" if name.endswith(".png") else "JPEG")
    # val/<wnid>/ as valprep.sh leaves it; one class has no val images in this subset, and no CSV is needed.
    save(color(1), root / "val" / "n01484850" / "ILSVRC2012_val_00000002.JPEG")
    save(color(2), root / "val" / "n01440764" / "ILSVRC2012_val_00000001.JPEG")
    save(color(3), root / "val" / "n01440764" / "ILSVRC2012_val_00000004.jpeg")
    (tmp_path / "datasets" / "LOC_synset_mapping.txt").write_text(MAPPING)
    benchmark = IMAGENET.for_root(root)
    assert benchmark.label_names == WNIDS and benchmark.descriptions[1] == "goldfish, Carassius auratus"
    val = benchmark.read(root, "validation")
    assert [(e.id, e.label) for e in val.examples] == [
        ("ILSVRC2012_val_00000001", 0), ("ILSVRC2012_val_00000004", 0), ("ILSVRC2012_val_00000002", 2)]
    # Without a mapping anywhere the classes still come from train/, with no descriptions.
    (tmp_path / "datasets" / "LOC_synset_mapping.txt").unlink()
    assert IMAGENET.for_root(root).label_names == WNIDS and IMAGENET.for_root(root).descriptions is None


def test_a_flat_training_folder_is_labelled_by_the_file_names(tmp_path: Path) -> None:
    for number, (_, name) in enumerate(TRAIN_FILES):
        save(color(number), tmp_path / "train" / name, "PNG" if name.endswith(".png") else "JPEG")
    benchmark = IMAGENET.for_root(tmp_path)
    assert benchmark.label_names == WNIDS and benchmark.read(tmp_path, "train").labels().tolist() == [0, 0, 1, 1, 2]
    save(color(9), tmp_path / "train" / "goldfish_4.JPEG")
    with pytest.raises(ValueError, match=r"goldfish_4\.JPEG: a training image outside a class folder"):
        IMAGENET.for_root(tmp_path)


def test_without_train_the_classes_are_the_mappings(tmp_path: Path) -> None:
    """An evaluation-only download: val in folders and the mapping, no train/."""
    save(color(0), tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000003.JPEG")
    (tmp_path / "LOC_synset_mapping.txt").write_text(MAPPING)
    benchmark = IMAGENET.for_root(tmp_path)
    assert benchmark.label_names == (*WNIDS, "n01491361")
    assert benchmark.read(tmp_path, "validation").labels().tolist() == [1]
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train: no such folder, and no LOC_synset_mapping\.txt"):
        IMAGENET.for_root(tmp_path)


def broken(tmp_path: Path, change) -> Path:
    """A fresh Kaggle download with ``change(download, images)`` applied; returns the download."""
    download = write_kaggle_download(tmp_path)
    change(download, images_of(download))
    return download


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line)


# (what is broken, the split read, the error, a pattern the message matches: each names the file at fault)
ERRORS = [
    ("no train folder and no mapping",
     lambda d, i: (shutil.rmtree(i / "train"), (d / "LOC_synset_mapping.txt").unlink()),
     "validation", FileNotFoundError, r"CLS-LOC/train: no such folder"),
    ("no test folder", lambda d, i: shutil.rmtree(i / "test"), "test", FileNotFoundError, r"CLS-LOC/test: no such"),
    ("no val CSV", lambda d, i: (d / "LOC_val_solution.csv").unlink(), "validation", FileNotFoundError,
     r"CLS-LOC/val: flat validation images are labelled by LOC_val_solution\.csv \(looked in .*CLS-LOC, "),
    ("a val image with no row",
     lambda d, i: save(color(0), i / "val" / "ILSVRC2012_val_00000005.JPEG"), "validation", ValueError,
     r"val/ILSVRC2012_val_00000005\.JPEG: no row for ILSVRC2012_val_00000005 in .*LOC_val_solution\.csv"),
    ("a CSV wnid outside the train classes",
     lambda d, i: add_line(d / "LOC_val_solution.csv", "ILSVRC2012_val_00000010,n01491361 1 2 3 4\n"),
     "validation", ValueError,
     r"LOC_val_solution\.csv:7: wnid n01491361 of ILSVRC2012_val_00000010 is not a class of the training set"),
    ("a CSV row without boxes", lambda d, i: add_line(d / "LOC_val_solution.csv", "ILSVRC2012_val_00000010,\n"),
     "validation", ValueError, r"LOC_val_solution\.csv:7: PredictionString must be 'wnid x1 y1 x2 y2' groups"),
    ("a CSV with another header",
     lambda d, i: (d / "LOC_val_solution.csv").write_text("ImageId,PredictedLabel\n"), "validation", ValueError,
     r"LOC_val_solution\.csv:1: expected the header ImageId,PredictionString"),
    ("an empty class folder", lambda d, i: (i / "train" / "n01491361").mkdir(), "train", ValueError,
     r"train/n01491361: empty class folder"),
    ("a class folder of non-images", lambda d, i: shutil.rmtree(i / "train" / "n01443537") or save(
        color(0), i / "train" / "n01443537" / "x.gif", "GIF"), "train", ValueError, r"n01443537: empty class folder"),
    ("a train class missing from the mapping",
     lambda d, i: save(color(0), i / "train" / "n09999999" / "n09999999_1.JPEG"), "train", ValueError,
     r"LOC_synset_mapping\.txt: no line for n09999999"),
    ("a mapping line without a name", lambda d, i: add_line(d / "LOC_synset_mapping.txt", "n01494475\n"),
     "train", ValueError, r"LOC_synset_mapping\.txt:5: expected 'wnid names'"),
    ("an image named for another class",
     lambda d, i: save(color(0), i / "train" / "n01440764" / "n01443537_8.JPEG"), "train", ValueError,
     r"n01440764/n01443537_8\.JPEG: named for class n01443537 but in the folder of n01440764"),
    ("class folders beside images", lambda d, i: save(color(0), i / "train" / "n01440764_1.JPEG"), "train",
     ValueError, r"CLS-LOC/train: holds both class folders \(n01440764, ...\) and images \(n01440764_1\.JPEG"),
    ("a val folder outside the train classes", lambda d, i: (shutil.rmtree(i / "val"), save(
        color(0), i / "val" / "n01491361" / "ILSVRC2012_val_00000001.JPEG")), "validation", ValueError,
     r"val/n01491361: n01491361 is not a class of the training set"),
    ("one id twice", lambda d, i: save(color(0), i / "val" / "ILSVRC2012_val_00000001.png", "PNG"), "validation",
     ValueError, r"ILSVRC2012_val_00000001\.png: image id ILSVRC2012_val_00000001 is also .*00000001\.JPEG"),
    ("an empty test folder", lambda d, i: (shutil.rmtree(i / "test"), (i / "test").mkdir()), "test", ValueError,
     r"CLS-LOC/test: no images"),
    ("test in class folders", lambda d, i: (shutil.rmtree(i / "test"), save(
        color(0), i / "test" / "n01440764" / "ILSVRC2012_test_00000001.JPEG")), "test", ValueError,
     r"CLS-LOC/test: holds folders \(n01440764, ...\); test images are flat and unlabelled"),
    ("an unknown split", lambda d, i: None, "val", ValueError,
     r"unknown ImageNet split 'val'; expected one of \['test', 'train', 'validation'\]"),
]


@pytest.mark.parametrize(("change", "split", "error", "pattern"), [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_bad_trees_raise_naming_the_file(tmp_path: Path, change, split: str, error: type, pattern: str) -> None:
    download = broken(tmp_path, change)
    with pytest.raises(error, match=pattern):
        IMAGENET.read(download, split)


def test_a_missing_root_and_an_unbound_benchmark(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such ImageNet folder"):
        IMAGENET.for_root(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"use get_benchmark\('imagenet'\)\.for_root\(root\)"):
        _ = IMAGENET.num_outputs


def test_load_image_decodes_by_content(tmp_path: Path) -> None:
    """ImageNet's odd files: a CMYK JPEG, a grayscale JPEG, a PNG (with alpha) named .JPEG — all RGB."""
    reference = color(5, (16, 12))
    cmyk = save(reference.convert("CMYK"), tmp_path / "n01739381_1062.JPEG")
    gray = save(reference.convert("L"), tmp_path / "n01440764_gray.JPEG")
    disguised = save(reference.convert("RGBA"), tmp_path / "n02105855_2933.JPEG", "PNG")
    assert [Image.open(p).mode for p in (cmyk, gray)] == ["CMYK", "L"] and Image.open(disguised).format == "PNG"
    for path, expected in ((cmyk, reference), (gray, reference.convert("L").convert("RGB")), (disguised, reference)):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (16, 12)
        difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
        assert difference.mean() < 3, path.name


def test_load_image_names_a_corrupt_truncated_or_missing_file(tmp_path: Path) -> None:
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, "JPEG")
    truncated = tmp_path / "ILSVRC2012_val_00000007.JPEG"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) * 2 // 3])
    garbage = tmp_path / "n01440764_1.JPEG"
    garbage.write_bytes(b"\x00not an image at all" * 10)
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00000007\.JPEG: cannot decode the image \(image file is "
                                         r"truncated"):
        load_image(truncated)
    with pytest.raises(ValueError, match=r"n01440764_1\.JPEG: cannot decode the image"):
        load_image(garbage)
    with pytest.raises(FileNotFoundError, match=r"absent\.JPEG: no such image"):
        load_image(tmp_path / "absent.JPEG")


def test_top1_and_top5() -> None:
    scores = np.array([[0.9, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5],    # label 0: top-1
                       [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0],    # label 4: 5th
                       [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0],    # label 5: 6th
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])   # label 4: ties by class order, 5th
    result = ImageNet(tuple(f"n0000000{c}" for c in range(7))).evaluate(scores, np.array([0, 4, 5, 4]))
    assert result == {"top1": 0.25, "top5": 0.75} and IMAGENET.primary_metric == "top1"


def test_the_submission_file(tmp_path: Path) -> None:
    wnids = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041")
    benchmark = ImageNet(wnids)
    scores = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    ids = ["ILSVRC2012_test_00000001", "ILSVRC2012_test_00000002"]
    path = benchmark.write_submission(tmp_path / "out", "test", ids, scores)
    assert path == tmp_path / "out" / "imagenet-test.csv"
    assert path.read_text() == ("ImageId,PredictedLabel\n"
                                "ILSVRC2012_test_00000001,n01498041 n01496331 n01494475 n01491361 n01484850\n"
                                "ILSVRC2012_test_00000002,n01440764 n01443537 n01484850 n01491361 n01494475\n")
    assert [row["ImageId"] for row in csv.DictReader(path.open())] == ids
    with pytest.raises(ValueError, match=r"class scores \[N, 7\], got shape \(2, 3\)"):
        benchmark.write_submission(tmp_path, "test", ids, scores[:, :3])
    with pytest.raises(ValueError, match="2 rows of predictions for 1 image ids"):
        benchmark.write_submission(tmp_path, "test", ids[:1], scores)
    with pytest.raises(ValueError, match=r"for_root\(root\)"):
        IMAGENET.write_submission(tmp_path, "test", ids, scores)


def test_shards_round_trip_with_the_odd_files_converted(tmp_path: Path) -> None:
    download = write_kaggle_download(tmp_path / "data")
    train = images_of(download) / "train"
    cmyk = save(color(30).convert("CMYK"), train / "n01440764" / "n01440764_20.JPEG")
    gray = save(color(31).convert("L"), train / "n01443537" / "n01443537_20.JPEG")
    disguised = save(color(32), train / "n01484850" / "n01484850_20.JPEG", "PNG")
    (train / "n01484850" / "n01484850_21.JPEG").write_bytes(b"\xff\xd8\xff cut off")  # corrupt: skipped

    summary = write_imagenet_shards(download, "train", tmp_path / "shards", max_count=3)
    index = read_index(tmp_path / "shards")
    assert index["kind"] == "image" and index["classes"] == list(WNIDS) and index["split"] == "train"
    assert index["skipped"] == {"not an image file": 1, "unreadable_image": 1}
    assert summary.samples == 8 and summary.shards == 3
    samples = [sample for shard in index["shards"] for sample in read_shard(str(tmp_path / "shards" / shard["name"]))]
    split = IMAGENET.read(download, "train")
    kept = [e for e in split.examples if e.id != "n01484850_21"]
    assert [int(s["cls"]) for s in samples] == [e.label for e in kept]
    stored = {e.id: s for e, s in zip(kept, samples)}
    # CMYK: stored as the RGB image load_image gives (lossless PNG); grayscale JPEG and the disguised PNG as they are.
    assert "png" in stored["n01440764_20"] and np.array_equal(
        np.asarray(Image.open(io.BytesIO(stored["n01440764_20"]["png"]))), np.asarray(load_image(cmyk)))
    assert stored["n01443537_20"]["jpg"] == gray.read_bytes()
    assert stored["n01484850_20"]["png"] == disguised.read_bytes()
    assert stored["n01440764_10026"]["jpg"] == (train / "n01440764" / "n01440764_10026.JPEG").read_bytes()

    write_imagenet_shards(images_of(download), "validation", tmp_path / "val-shards")
    val = read_index(tmp_path / "val-shards")
    labels = [int(s["cls"]) for s in read_shard(str(tmp_path / "val-shards" / val["shards"][0]["name"]))]
    assert labels == [VAL_LABELS[key] for key in sorted(VAL_LABELS)]
    with pytest.raises(ValueError, match="split 'test' has no labels"):
        write_imagenet_shards(download, "test", tmp_path / "test-shards")


def test_write_imagenet_layout_writes_what_the_reader_reads(tmp_path: Path) -> None:
    wnids = ["n00000000", "n00000001", "n00000002"]
    names = ["T-shirt/top", "trouser", "pullover"]
    arrays = [np.full((28, 28), 40 * c + 20, np.uint8) for c in range(3)]
    train = [(arrays[c], c) for c in (0, 1, 2, 2, 1, 0, 0)]
    val = [(color(c), c) for c in (2, 0, 1)]
    root = write_imagenet_layout(tmp_path / "fashion", train, val, wnids, names, test=[arrays[1], color(7)])
    assert (root / "train" / "n00000000" / "n00000000_3.JPEG").is_file()
    assert (root / "LOC_val_solution.csv").read_text().splitlines()[1] == "ILSVRC2012_val_00000001,n00000002 0 0 7 7"
    benchmark = IMAGENET.for_root(root)
    assert benchmark.label_names == tuple(wnids) and benchmark.descriptions == tuple(names)
    read_train = benchmark.read(root, "train")
    assert sorted(read_train.labels().tolist()) == sorted(label for _, label in train)
    for example in read_train.examples:
        image = np.asarray(load_image(example.inputs["image"]))
        assert image.shape == (28, 28, 3) and abs(image.mean() - (40 * example.label + 20)) < 2
    assert benchmark.read(root, "validation").labels().tolist() == [2, 0, 1]
    assert len(benchmark.read(root, "test").examples) == 2

    bad = [(dict(wnids=["n00000001", "n00000000"]), ValueError, "sorted and unique"),
           (dict(wnids=["class0", "n00000001", "n00000002"]), ValueError, r"'n' \+ 8 digits .*class0"),
           (dict(names=["a", "b"]), ValueError, "names must be 3 non-empty"),
           (dict(train=[(arrays[0], 0), (arrays[1], 3)]), ValueError, r"train\[1\]: class index 3 is not in \[0, 3\)"),
           (dict(train=[(arrays[0], 0), (arrays[1], 1)]), ValueError, "class n00000002 has no training image"),
           (dict(val=[]), ValueError, "val: no images"),
           (dict(train=[(arrays[0].astype(np.float32), c) for c in range(3)]), ValueError,
            r"train\[0\]: an image array must be uint8"),
           (dict(root=root), FileExistsError, "not empty")]
    for change, error, pattern in bad:
        arguments = dict(root=tmp_path / "new", train=train, val=val, wnids=wnids, names=names) | change
        with pytest.raises(error, match=pattern):
            write_imagenet_layout(**arguments)
