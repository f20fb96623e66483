"""ImageNet-1K (ILSVRC-2012 classification) as a fine-tuning benchmark, registered as ``imagenet``: the reader for
the real download layouts, image loading by content, top-1/top-5 accuracy, the submission file and shards.

**Layout.** ``root`` is either the folder holding ``train/``, ``val/`` and ``test/`` (a prepared tree, or the Kaggle
download's ``ILSVRC/Data/CLS-LOC``) or the Kaggle download itself, whose images are under
``root/ILSVRC/Data/CLS-LOC``::

    imagenet-object-localization-challenge/         the Kaggle download
        LOC_synset_mapping.txt                       n01440764 tench, Tinca tinca        (one class a line)
        LOC_val_solution.csv                         ImageId,PredictionString
                                                     ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 ...
        ILSVRC/Data/CLS-LOC/
            train/n01440764/n01440764_10026.JPEG     train/<wnid>/*, or flat: train/<wnid>_<n>.JPEG
            val/ILSVRC2012_val_00000001.JPEG         flat, labelled by the CSV; or in class folders val/<wnid>/*
            test/ILSVRC2012_test_00000001.JPEG       flat, no labels

- Splits: ``train``, ``validation`` (the ``val/`` folder) and ``test``.
- Classes: the sorted wnids of ``train/`` (its folder names, or the wnids its flat file names start with); a class
  index is a position in that list. Without ``train/`` (an evaluation-only download) they are the sorted wnids of
  ``LOC_synset_mapping.txt``. :meth:`ImageNet.for_root` gives the benchmark with these ``label_names``.
- Labels of a flat ``val/``: the FIRST wnid of the image's ``PredictionString`` (which lists ``wnid x1 y1 x2 y2``
  boxes). A ``val/`` of class folders is labelled by its folders and needs no CSV.
- ``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt`` are looked for in, first found wins: the image folder, its
  parent, and — where the image folder is ``.../ILSVRC/Data/CLS-LOC`` — the download folder holding ``ILSVRC/``
  (where Kaggle puts them). The mapping is optional; where present every train wnid must be in it, and its names
  become :attr:`ImageNet.descriptions`.
- Images: files ending ``.jpg``, ``.jpeg`` or ``.png`` in any case, decoded by content (:func:`load_image`: the set
  holds CMYK and grayscale JPEGs and a PNG named ``.JPEG``); other files are skipped and counted in
  ``Split.skipped``. ``Example.id`` is the file stem (``ILSVRC2012_val_00000001``, ``n01440764_10026``) and
  ``Example.inputs`` is ``{"image": Path}``.

**Metrics:** ``top1`` (primary) and ``top5`` accuracy of class scores ``[N, C]``.

**Submission** (:meth:`ImageNet.write_submission`): ``imagenet-<split>.csv``, a header and one row per image, its id
and its five highest-scoring wnids, best first, space-separated::

    ImageId,PredictedLabel
    ILSVRC2012_test_00000001,n01440764 n01443537 n01484850 n01491361 n01494475

**Shards** (:func:`write_imagenet_shards`): a labelled split as an ``image`` shard set (``itnet_scale.data.shards``)
whose index lists the wnids as ``classes``; JPEG/PNG files in RGB or grayscale are stored as they are, CMYK ones
converted to RGB (PNG), a PNG named ``.JPEG`` stored as the PNG it is.

:func:`write_imagenet_layout` writes images and labels as such a tree (train folders, flat val with its CSV, the
mapping).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from itnet_scale.checkpoint.atomic_writes import write_text_atomically
from itnet_scale.data.shards import (
    IMAGE_SUFFIXES,
    ShardSetSummary,
    ShardSetWriter,
    read_image_or_skip,
)
from itnet_scale.data.stream import IMAGE_FORMATS
from itnet_scale.tasks import metrics
from itnet_scale.tasks.benchmark import Benchmark, Example, Split, register_benchmark

logger = logging.getLogger(__name__)

VAL_SOLUTION = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
#: Where a Kaggle download keeps the image folders.
KAGGLE_IMAGES = ("ILSVRC", "Data", "CLS-LOC")
#: Split name -> its folder.
SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}
VAL_SOLUTION_HEADER = ("ImageId", "PredictionString")
SUBMISSION_HEADER = ("ImageId", "PredictedLabel")
#: Classes per submission row, and the k of ``top5``.
TOP_K = 5
WNID = re.compile(r"n\d{8}")
#: A training image's name: its class's wnid, "_", a number (``n01440764_10026``).
TRAIN_NAME = re.compile(r"(?P<wnid>n\d{8})_\d+")

ImageLike = Image.Image | np.ndarray


@dataclass(frozen=True)
class ImageNetFiles:
    """Where a download's parts are: ``images``, the folder holding ``train/``, ``val/`` and ``test/``; the CSV and
    the mapping (None where absent); ``searched``, the folders looked in for them."""

    images: Path
    val_solution: Path | None
    synset_mapping: Path | None
    searched: tuple[Path, ...]

    @classmethod
    def find(cls, root: str | Path) -> ImageNetFiles:
        """The parts of the download at ``root`` (see the module doc for where each is looked for)."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such ImageNet folder")
        kaggle = root.joinpath(*KAGGLE_IMAGES)
        images = kaggle if kaggle.is_dir() else root
        places = [images, images.parent]
        if images.parts[-len(KAGGLE_IMAGES):] == KAGGLE_IMAGES:
            places.append(images.parents[len(KAGGLE_IMAGES) - 1])
        searched = tuple(dict.fromkeys(places))

        def first(name: str) -> Path | None:
            return next((place / name for place in searched if (place / name).is_file()), None)

        return cls(images, first(VAL_SOLUTION), first(SYNSET_MAPPING), searched)

    def folder(self, split: str) -> Path:
        """The image folder of ``split``; an unknown split raises naming the known ones."""
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"unknown ImageNet split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
        return self.images / SPLIT_FOLDERS[split]

    def where(self, name: str) -> str:
        return f"{name} (looked in {', '.join(str(place) for place in self.searched)})"


def read_synset_mapping(path: str | Path) -> dict[str, str]:
    """``LOC_synset_mapping.txt`` as wnid -> names (``n01440764 tench, Tinca tinca`` per line), in file order.
    Raises ``ValueError`` naming the file and line of a line without a name or a wnid listed twice."""
    path = Path(path)
    mapping: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'wnid names', got {line!r}")
        if parts[0] in mapping:
            raise ValueError(f"{path}:{number}: wnid {parts[0]} is listed twice")
        mapping[parts[0]] = parts[1].strip()
    if not mapping:
        raise ValueError(f"{path}: no classes")
    return mapping


def read_val_solution(path: str | Path, wnids: Sequence[str] | None = None) -> dict[str, str]:
    """``LOC_val_solution.csv`` as image id -> label wnid: the first wnid of ``PredictionString`` (``wnid x1 y1 x2
    y2`` groups). With ``wnids``, a label outside them raises. Errors name the file and line."""
    path = Path(path)
    known = set(wnids) if wnids is not None else None
    labels: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or tuple(column.strip() for column in header) != VAL_SOLUTION_HEADER:
            raise ValueError(f"{path}:1: expected the header {','.join(VAL_SOLUTION_HEADER)}, got {header!r}")
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{where}: expected 2 columns (ImageId,PredictionString), got {len(row)}")
            image_id, boxes = row[0].strip(), row[1].split()
            if not image_id or not boxes or len(boxes) % 5:
                raise ValueError(f"{where}: PredictionString must be 'wnid x1 y1 x2 y2' groups, got {row[1]!r}")
            if image_id in labels:
                raise ValueError(f"{where}: image {image_id} is listed twice")
            if known is not None and boxes[0] not in known:
                raise ValueError(f"{where}: wnid {boxes[0]} of {image_id} is not a class of the training set")
            labels[image_id] = boxes[0]
    return labels


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path`` in RGB, decoded by content whatever its name says (JPEG or PNG; CMYK and grayscale
    converted). A missing file raises ``FileNotFoundError``, a corrupt or truncated one ``ValueError``; both name
    the file."""
    path = Path(path)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:  # only these decoders
            return image.convert("RGB")  # decodes the whole image: a truncated file fails here
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode the image ({error})") from error


# --- Reading the tree ---------------------------------------------------------------------------------------------


def _skip(skipped: Counter[str], reason: str, path: Path) -> None:
    skipped[reason] += 1
    logger.warning("skipped (%s): %s", reason, path)


def _entries(folder: Path, skipped: Counter[str]) -> tuple[list[Path], list[Path]]:
    """``(class folders, image files)`` in ``folder``, sorted (hidden entries left out, other files skipped as
    ``not an image file``). A folder holding both raises."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    with os.scandir(folder) as scan:
        entries = sorted((entry for entry in scan if not entry.name.startswith(".")), key=lambda e: e.name)
    folders = [Path(entry.path) for entry in entries if entry.is_dir()]
    images = []
    for entry in entries:
        if entry.is_dir():
            continue
        if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            images.append(Path(entry.path))
        else:
            _skip(skipped, "not an image file", Path(entry.path))
    if folders and images:
        raise ValueError(f"{folder}: holds both class folders ({folders[0].name}, ...) and images "
                         f"({images[0].name}, ...); expected one or the other")
    return folders, images


def _train_name_wnid(path: Path) -> str:
    match = TRAIN_NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError(f"{path}: a training image outside a class folder must be named <wnid>_<number> "
                         "(n01440764_10026.JPEG)")
    return match["wnid"]


def _train_wnids(files: ImageNetFiles) -> list[str]:
    """The sorted wnids of ``train/``: its folder names, or the wnids its flat file names start with."""
    train = files.folder("train")
    folders, images = _entries(train, Counter())
    if not folders and not images:
        raise ValueError(f"{train}: no class folders or images")
    return [folder.name for folder in folders] if folders else sorted({_train_name_wnid(p) for p in images})


def read_classes(root: str | Path) -> tuple[tuple[str, ...], dict[str, str] | None]:
    """``(wnids, mapping)``: the classes of the download at ``root`` in class-index order (see the module doc) and
    its ``LOC_synset_mapping.txt`` (None where absent)."""
    files = ImageNetFiles.find(root)
    mapping = read_synset_mapping(files.synset_mapping) if files.synset_mapping is not None else None
    if files.folder("train").is_dir():
        wnids = _train_wnids(files)
        if mapping is not None:
            missing = [wnid for wnid in wnids if wnid not in mapping]
            if missing:
                raise ValueError(f"{files.synset_mapping}: no line for {missing[0]} ({len(missing)} of the classes "
                                 f"of {files.folder('train')} are missing)")
    elif mapping is not None:
        wnids = sorted(mapping)
    else:
        raise FileNotFoundError(f"{files.folder('train')}: no such folder, and no {files.where(SYNSET_MAPPING)}: "
                                "the classes are the wnids of train/ (or of the mapping)")
    return tuple(wnids), mapping


def _from_class_folders(folders: list[Path], index: dict[str, int], skipped: Counter[str]) -> list[Example]:
    examples = []
    for folder in folders:
        if folder.name not in index:
            raise ValueError(f"{folder}: {folder.name} is not a class of the training set")
        _, images = _entries(folder, skipped)
        if not images:
            raise ValueError(f"{folder}: empty class folder (no .jpg, .jpeg or .png images)")
        for path in images:
            match = TRAIN_NAME.fullmatch(path.stem)
            if match is not None and match["wnid"] != folder.name:
                raise ValueError(f"{path}: named for class {match['wnid']} but in the folder of {folder.name}")
            examples.append(Example(path.stem, {"image": path}, index[folder.name]))
    return examples


def _flat(images: list[Path], label_of: Callable[[Path], int | None]) -> list[Example]:
    return [Example(path.stem, {"image": path}, label_of(path)) for path in images]


def _check_unique_ids(examples: list[Example]) -> None:
    seen: dict[str, Path] = {}
    for example in examples:
        path = example.inputs["image"]
        if example.id in seen:
            raise ValueError(f"{path}: image id {example.id} is also {seen[example.id]}")
        seen[example.id] = path


def _val_from_solution(files: ImageNetFiles, images: list[Path], index: dict[str, int],
                       skipped: Counter[str]) -> list[Example]:
    val = files.folder("validation")
    if files.val_solution is None:
        raise FileNotFoundError(f"{val}: flat validation images are labelled by {files.where(VAL_SOLUTION)}, "
                                "which is missing")
    solution = read_val_solution(files.val_solution, list(index))

    def label_of(path: Path) -> int:
        if path.stem not in solution:
            raise ValueError(f"{path}: no row for {path.stem} in {files.val_solution}")
        return index[solution[path.stem]]

    examples = _flat(images, label_of)
    unmatched = len(solution) - len(examples)
    if unmatched:
        skipped[f"{VAL_SOLUTION} row without an image"] += unmatched
        logger.warning("%s: %d rows name no image in %s", files.val_solution, unmatched, val)
    return examples


# --- The benchmark ------------------------------------------------------------------------------------------------


class ImageNet(Benchmark):
    """ImageNet-1K. The registered instance knows no classes (they are the files' wnids); :meth:`for_root` gives one
    that does: ``label_names`` the wnids in class-index order, ``descriptions`` their mapping names (or None)."""

    name = "imagenet"
    modality = "image"
    primary_metric = "top1"

    def __init__(self, wnids: Sequence[str] | None = None, descriptions: Sequence[str] | None = None) -> None:
        self._wnids = tuple(wnids) if wnids is not None else None
        self.descriptions = tuple(descriptions) if descriptions is not None else None
        if self.descriptions is not None and len(self.descriptions) != len(self._wnids or ()):
            raise ValueError(f"{len(self.descriptions)} descriptions for {len(self._wnids or ())} wnids")

    @property
    def label_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The wnids in class-index order; only a benchmark from :meth:`for_root` knows them."""
        if self._wnids is None:
            raise ValueError("imagenet's classes are the wnids of its files: use get_benchmark('imagenet')"
                             ".for_root(root)")
        return self._wnids

    @property
    def regression(self) -> bool:
        return False

    def for_root(self, root: Path) -> ImageNet:
        wnids, mapping = read_classes(root)
        return ImageNet(wnids, [mapping[wnid] for wnid in wnids] if mapping is not None else None)

    def read(self, root: Path, split: str) -> Split:
        files = ImageNetFiles.find(root)
        folder = files.folder(split)
        skipped: Counter[str] = Counter()
        folders, images = _entries(folder, skipped)
        if not folders and not images:
            raise ValueError(f"{folder}: no images")
        if split == "test":
            if folders:
                raise ValueError(f"{folder}: holds folders ({folders[0].name}, ...); test images are flat and "
                                 "unlabelled")
            examples = _flat(images, lambda path: None)
        else:
            wnids = self._wnids if self._wnids is not None else read_classes(root)[0]
            index = {wnid: label for label, wnid in enumerate(wnids)}
            if folders:
                examples = _from_class_folders(folders, index, skipped)
            elif split == "train":
                def label_of(path: Path) -> int:
                    wnid = _train_name_wnid(path)
                    if wnid not in index:
                        raise ValueError(f"{path}: {wnid} is not one of the benchmark's {len(index)} classes")
                    return index[wnid]

                examples = _flat(images, label_of)
            else:
                examples = _val_from_solution(files, images, index, skipped)
        _check_unique_ids(examples)
        return Split(split, examples, dict(skipped))

    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``top1`` and ``top5`` accuracy of class scores ``[N, C]`` against labels ``[N]``."""
        return {"top1": metrics.accuracy(predictions, labels),
                "top5": metrics.top_k_accuracy(predictions, labels, TOP_K)}

    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """Write ``folder/imagenet-<split>.csv`` (see the module doc) from class scores ``[N, C]`` of the images
        ``ids``; needs the classes (:meth:`for_root`)."""
        wnids = self.label_names
        scores = np.asarray(predictions)
        if scores.ndim != 2 or scores.shape[1] != len(wnids):
            raise ValueError(f"predictions must be class scores [N, {len(wnids)}], got shape {scores.shape}")
        if len(ids) != len(scores) or not len(ids):
            raise ValueError(f"{len(scores)} rows of predictions for {len(ids)} image ids")
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(SUBMISSION_HEADER)
        for image_id, top in zip(ids, metrics.top_k_classes(scores, TOP_K)):
            writer.writerow((image_id, " ".join(wnids[c] for c in top)))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{split}.csv"
        write_text_atomically(path, text.getvalue())
        return path


IMAGENET = register_benchmark(ImageNet())


# --- Shards and trees ---------------------------------------------------------------------------------------------


def write_imagenet_shards(root: str | Path, split: str, output: str | Path,
                          **writer_options: Any) -> ShardSetSummary:
    """Write the labelled ``split`` (``train`` or ``validation``) of the download at ``root`` as an ``image`` shard
    set in ``output``, in the split's order, with the wnids as the index's ``classes``. Images are stored as
    :func:`~itnet_scale.data.shards.encoded_image` does (CMYK converted to RGB; a PNG named .JPEG as PNG); an
    unreadable one is skipped and counted (``unreadable_image``), as are the split's own skips.
    ``writer_options`` go to :class:`~itnet_scale.data.shards.ShardSetWriter`."""
    benchmark = IMAGENET.for_root(Path(root))
    data = benchmark.read(Path(root), split)
    if not data.labelled:
        raise ValueError(f"split {split!r} has no labels; an image shard set holds a class per sample")
    info = {"source": str(ImageNetFiles.find(root).folder(split)), "split": split,
            "classes": list(benchmark.label_names)}
    with ShardSetWriter(output, "image", info=info, **writer_options) as writer:
        writer.skipped.update(data.skipped)
        for example in data.examples:
            path = example.inputs["image"]
            image = read_image_or_skip(writer, path, f"{split} image {example.id}")
            if image is not None:
                writer.write({image[0]: image[1], "cls": str(example.label)})
    return writer.summary


def _as_image(image: ImageLike, where: str) -> Image.Image:
    """A PIL image of ``image`` (a PIL image, or uint8 ``[H, W]`` / ``[H, W, 3]``) that JPEG can store."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"{where}: an image array must be uint8 [H, W] or [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")
        return Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"{where}: expected a PIL image or a uint8 array, got {type(image).__name__}")
    return image if image.mode in ("RGB", "L", "CMYK") else image.convert("RGB")


def write_imagenet_layout(root: str | Path, train: Sequence[tuple[ImageLike, int]],
                          val: Sequence[tuple[ImageLike, int]], wnids: Sequence[str], names: Sequence[str], *,
                          test: Sequence[ImageLike] = ()) -> Path:
    """Write ``(image, class index)`` pairs as an ImageNet tree at ``root`` (which must be empty or new):
    ``train/<wnid>/<wnid>_<i>.JPEG``, ``val/ILSVRC2012_val_<8 digits>.JPEG`` labelled by ``LOC_val_solution.csv``
    (one whole-image box each), ``LOC_synset_mapping.txt`` (``<wnid> <name>``) and unlabelled
    ``test/ILSVRC2012_test_<8 digits>.JPEG``. ``wnids`` (``n`` + 8 digits) are sorted, as the reader numbers
    them; every class needs a training image. Returns ``root``."""
    root = Path(root)
    wnids, names = list(wnids), list(names)
    bad = [wnid for wnid in wnids if not isinstance(wnid, str) or not WNID.fullmatch(wnid)]
    if not wnids or bad:
        raise ValueError(f"wnids must be 'n' + 8 digits (n01440764), got {bad[:3] if bad else 'none'}")
    if wnids != sorted(set(wnids)):
        raise ValueError("wnids must be sorted and unique: the class index is the position in the sorted wnids")
    if len(names) != len(wnids) or any(not str(name).strip() or "\n" in str(name) for name in names):
        raise ValueError(f"names must be {len(wnids)} non-empty one-line strings, one per wnid")
    for split, pairs in (("train", train), ("val", val)):
        if not pairs:
            raise ValueError(f"{split}: no images")
        wrong = [i for i, (_, label) in enumerate(pairs) if not 0 <= int(label) < len(wnids)]
        if wrong:
            raise ValueError(f"{split}[{wrong[0]}]: class index {pairs[wrong[0]][1]} is not in [0, {len(wnids)})")
    empty = sorted(set(range(len(wnids))) - {int(label) for _, label in train})
    if empty:
        raise ValueError(f"class {wnids[empty[0]]} has no training image (an empty class folder is an error)")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: not empty; write an ImageNet tree into a new folder")
    for split, images in (("train", [image for image, _ in train]), ("val", [image for image, _ in val]),
                          ("test", test)):
        for number, image in enumerate(images):  # check them all before writing any
            _as_image(image, f"{split}[{number}]")

    counts = Counter()
    for number, (image, label) in enumerate(train):
        wnid = wnids[int(label)]
        counts[wnid] += 1
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        _as_image(image, f"train[{number}]").save(folder / f"{wnid}_{counts[wnid]}.JPEG", format="JPEG", quality=95)
    (root / "val").mkdir(parents=True)
    rows = [",".join(VAL_SOLUTION_HEADER)]
    for number, (image, label) in enumerate(val, start=1):
        image_id = f"ILSVRC2012_val_{number:08d}"
        picture = _as_image(image, f"val[{number - 1}]")
        picture.save(root / "val" / f"{image_id}.JPEG", format="JPEG", quality=95)
        rows.append(f"{image_id},{wnids[int(label)]} 0 0 {picture.width - 1} {picture.height - 1}")
    (root / VAL_SOLUTION).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / SYNSET_MAPPING).write_text("".join(f"{wnid} {name}\n" for wnid, name in zip(wnids, names)),
                                       encoding="utf-8")
    if test:
        (root / "test").mkdir()
    for number, image in enumerate(test, start=1):
        _as_image(image, f"test[{number - 1}]").save(root / "test" / f"ILSVRC2012_test_{number:08d}.JPEG",
                                                     format="JPEG", quality=95)
    return root


__all__ = ["IMAGENET", "SPLIT_FOLDERS", "SUBMISSION_HEADER", "SYNSET_MAPPING", "TOP_K", "VAL_SOLUTION", "ImageNet",
           "ImageNetFiles", "load_image", "read_classes", "read_synset_mapping", "read_val_solution",
           "write_imagenet_layout", "write_imagenet_shards"]
