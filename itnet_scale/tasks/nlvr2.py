"""NLVR2 (Natural Language for Visual Reasoning for Real) as a fine-tuning benchmark, registered as ``nlvr2``: is a
sentence true of a pair of photographs? The reader of the release's files, accuracy and consistency, the
predictions file and a writer of the layout.

**Layout.** ``root`` holds the release's JSON files and its unzipped images::

    nlvr2/                                   root (the release's nlvr2/ folder)
        data/train.json dev.json             JSON lines (one object a line, despite the name); or in root itself
             test1.json test2.json
        images/train/<n>/train-10171-0-img0.png     train images in numbered folders (train.json's "directory")
        dev/dev-850-0-img0.png               dev, test1, test2: flat, in root/<name>/ (where dev_img.zip puts
        test1/  test2/                       them) or in root/images/<name>/

- Splits: ``train`` (``train.json``), ``validation`` (``dev.json``), ``test-P`` (``test1.json``, the public test
  set) and ``test-U`` (``test2.json``, the unreleased test set, whose labels were published later).
- JSON files are looked for in ``root/data/`` then ``root/``; a split's image folder is ``root/images/<name>``, else
  ``root/<name>`` (``<name>``: ``train``, ``dev``, ``test1``, ``test2``). Images are found by file name anywhere
  under that folder (the whole tree is listed once per read), so the numbered train folders need no guessing and a
  name found twice is an error naming both files.
- Each line is an object with at least ``identifier`` (``<split>-<set>-<pair>-<sentence>``: ``dev-850-0-1`` is
  sentence 1 of pair 0 of the eight-image set 850; the split part must be the file's name) and ``sentence``; its
  ``label`` is ``"True"`` or ``"False"`` (absent: None, a test file without labels). Other fields (``left_url``,
  ``right_url``, ``writer``, ``synset``, ``query``, ``validation``, ``extra_validations``, ``directory``) are not
  read. A line that is not a JSON object, lacks a field, has another label, a malformed or repeated identifier: an
  error naming the file and line.
- The images of ``<split>-<set>-<pair>-<sentence>`` are ``<split>-<set>-<pair>-img0.png`` (left) and ``...-img1.png``
  (right), shared by the pair's sentences. Many are JPEGs named ``.png``: they are decoded by content
  (:func:`~itnet_scale.tasks.imagenet.load_image`). About 5% of the release's URLs were dead when it was
  downloaded, so some images are absent: an example missing either image is skipped, counted in
  :attr:`Split.skipped` (``missing image``) and logged with its identifier; a split left with no example raises.
- ``Example``: ``id`` the identifier, ``inputs`` ``{"images": (left, right), "text": sentence}``, ``label`` the
  index in :attr:`Nlvr2.label_names` ``("False", "True")``.

**Metrics** (:meth:`Nlvr2.evaluate_split`, as the release's ``eval/metrics.py``): ``accuracy`` (primary) and
``consistency``, the share of unique sentences whose every example is predicted correctly (examples share a
sentence when their identifiers differ only in the pair: ``dev-850-*-1``). Scores are over the examples read: with
images missing they are not the official numbers over the whole file. Evaluated each epoch on ``validation``;
``test-P`` and ``test-U`` are predicted, and scored where their files hold labels.

**Predictions file** (:meth:`Nlvr2.write_submission`): ``nlvr2-<split>-predictions.csv``, what ``eval/metrics.py``
and the leaderboard read: no header, one line per example in order, its identifier and ``True`` or ``False``::

    test1-0-1-0,True

:func:`write_nlvr2_layout` writes examples as a split of this layout (JSON lines and the pair images).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from itnet_scale.checkpoint.atomic_writes import write_text_atomically
from itnet_scale.tasks.benchmark import Benchmark, Example, Split, register_benchmark
from itnet_scale.tasks.metrics import accuracy, predicted_classes

logger = logging.getLogger(__name__)

#: Split name → the release's name for it: the JSON file's stem, the image folder and the identifiers' first part.
RELEASE_NAMES = {"train": "train", "validation": "dev", "test-P": "test1", "test-U": "test2"}
#: Where the JSON files are looked for, relative to the root, first found wins.
JSON_FOLDERS = ("data", ".")
#: The label strings of the JSON files, in class-index order.
LABEL_NAMES = ("False", "True")
#: Numbered folders :func:`write_nlvr2_layout` spreads train images over (as the release's ``images/train/<n>/``).
TRAIN_IMAGE_FOLDERS = 100
IDENTIFIER = re.compile(r"(?P<split>[a-z0-9]+)-(?P<set>\d+)-(?P<pair>\d+)-(?P<sentence>\d+)")
MISSING_IMAGE = "missing image"


@dataclass(frozen=True)
class Nlvr2Id:
    """A parsed identifier ``<split>-<set>-<pair>-<sentence>`` (``dev-850-0-1``)."""

    split: str
    set: int
    pair: int
    sentence: int

    @classmethod
    def parse(cls, identifier: str) -> Nlvr2Id:
        """The parts of ``identifier``; anything else (``dev-850-0``, ``dev-850-a-1``) raises ``ValueError``."""
        match = IDENTIFIER.fullmatch(identifier) if isinstance(identifier, str) else None
        if match is None:
            raise ValueError(f"bad NLVR2 identifier {identifier!r}: expected <split>-<set>-<pair>-<sentence> "
                             "(dev-850-0-1)")
        return cls(match["split"], int(match["set"]), int(match["pair"]), int(match["sentence"]))

    @property
    def image_names(self) -> tuple[str, str]:
        """The left and right image files of the pair: ``dev-850-0-img0.png``, ``dev-850-0-img1.png``."""
        stem = f"{self.split}-{self.set}-{self.pair}"
        return f"{stem}-img0.png", f"{stem}-img1.png"

    @property
    def sentence_key(self) -> str:
        """What the examples of one sentence share: the identifier without its pair (``dev-850-*-1``)."""
        return f"{self.split}-{self.set}-*-{self.sentence}"


def consistency(ids: Sequence[str], correct: np.ndarray) -> float:
    """The share of unique sentences (:attr:`Nlvr2Id.sentence_key`) whose every example is correct; ``ids`` ``[N]``
    identifiers and ``correct`` ``[N]`` booleans, in the same order."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 1 or len(correct) == 0 or len(correct) != len(ids):
        raise ValueError(f"consistency needs one correctness flag per identifier, got {len(ids)} identifiers and "
                         f"shape {correct.shape}")
    all_right: dict[str, bool] = {}
    for identifier, right in zip(ids, correct):
        key = Nlvr2Id.parse(identifier).sentence_key
        all_right[key] = all_right.get(key, True) and bool(right)
    return sum(all_right.values()) / len(all_right)


# --- Reading ------------------------------------------------------------------------------------------------------


def _release_name(split: str) -> str:
    if split not in RELEASE_NAMES:
        raise ValueError(f"unknown NLVR2 split {split!r}; expected one of {list(RELEASE_NAMES)}")
    return RELEASE_NAMES[split]


def json_file(root: str | Path, split: str) -> Path:
    """The JSON-lines file of ``split`` under ``root`` (see the module doc); a missing one raises naming where it
    was looked for."""
    name = f"{_release_name(split)}.json"
    places = [Path(root) / folder / name for folder in JSON_FOLDERS]
    found = next((path for path in places if path.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{name}: no such NLVR2 file (looked for {', '.join(str(p) for p in places)})")
    return found


def image_folder(root: str | Path, split: str) -> Path:
    """The image folder of ``split``: ``root/images/<name>``, else ``root/<name>``; neither raises naming both."""
    name = _release_name(split)
    places = [Path(root) / "images" / name, Path(root) / name]
    found = next((path for path in places if path.is_dir()), None)
    if found is None:
        raise FileNotFoundError(f"no NLVR2 image folder for {split} (looked for {places[0]} and {places[1]})")
    return found


def _files_by_name(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` (hidden ones left out) by its name; a name found twice raises naming both."""
    files: dict[str, Path] = {}
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(parent) / name
            if name in files:
                raise ValueError(f"{path}: image {name} is also {files[name]}")
            files[name] = path
    return files


def _field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def read_json_lines(path: Path, release_name: str) -> list[tuple[str, str, int | None]]:
    """``(identifier, sentence, label)`` of each line of an NLVR2 JSON-lines file, in order (blank lines skipped);
    identifiers must start with ``release_name``. Errors name the file and line."""
    rows: list[tuple[str, str, int | None]] = []
    lines: dict[str, int] = {}
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not a JSON object ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            identifier = _field(record, "identifier", where)
            try:
                parsed = Nlvr2Id.parse(identifier)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            if parsed.split != release_name:
                raise ValueError(f"{where}: identifier {identifier} is not of {path.name} (expected "
                                 f"{release_name}-...)")
            if identifier in lines:
                raise ValueError(f"{where}: identifier {identifier} is also on line {lines[identifier]}")
            lines[identifier] = number
            label = record.get("label")
            if label is not None and label not in LABEL_NAMES:
                raise ValueError(f"{where}: label must be one of {list(LABEL_NAMES)}, got {label!r}")
            rows.append((identifier, _field(record, "sentence", where),
                         None if label is None else LABEL_NAMES.index(label)))
    return rows


# --- The benchmark ------------------------------------------------------------------------------------------------


class Nlvr2(Benchmark):
    """NLVR2 (see the module doc): two classes, ``False`` and ``True``, of an image pair and a sentence."""

    name = "nlvr2"
    modality = "image_pair_text"
    label_names = LABEL_NAMES
    primary_metric = "accuracy"
    train_split = "train"
    eval_splits = ("validation",)
    test_splits = ("test-P", "test-U")

    @property
    def model_task(self) -> str:
        return "nlvr2"  # ITNetForNLVR2: the pair's reading is the model config's image_pair_form

    def read(self, root: Path, split: str) -> Split:
        release_name = _release_name(split)
        path = json_file(root, split)
        rows = read_json_lines(path, release_name)
        if not rows:
            raise ValueError(f"{path}: no examples")
        folder = image_folder(root, split)
        images = _files_by_name(folder)
        examples: list[Example] = []
        skipped: Counter[str] = Counter()
        for identifier, sentence, label in rows:
            names = Nlvr2Id.parse(identifier).image_names
            missing = [name for name in names if name not in images]
            if missing:
                skipped[MISSING_IMAGE] += 1
                logger.warning("skipped (%s): %s has no %s in %s", MISSING_IMAGE, identifier, " or ".join(missing),
                               folder)
                continue
            pair = (images[names[0]], images[names[1]])
            examples.append(Example(identifier, {"images": pair, "text": sentence}, label))
        if not examples:
            raise ValueError(f"{path}: none of its {len(rows)} examples has both images in {folder}")
        return Split(split, examples, dict(skipped))

    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``accuracy`` of class scores ``[N, 2]`` (or classes ``[N]``); consistency needs the identifiers
        (:meth:`evaluate_split`)."""
        return {"accuracy": accuracy(predictions, labels)}

    def evaluate_split(self, predictions: np.ndarray, split: Split) -> dict[str, float]:
        """``accuracy`` and ``consistency`` of class scores ``[N, 2]`` (or classes ``[N]``) on ``split``."""
        labels = split.labels()
        result = self.evaluate(predictions, labels)
        correct = predicted_classes(predictions) == labels
        result["consistency"] = consistency([example.id for example in split.examples], correct)
        return result

    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """Write ``folder/nlvr2-<split>-predictions.csv`` (see the module doc) from class scores ``[N, 2]`` (or
        classes ``[N]``) of the examples ``ids``."""
        _release_name(split)
        scores = np.asarray(predictions)
        if not (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == len(LABEL_NAMES))):
            raise ValueError(f"predictions must be class scores [N, 2] or classes [N], got shape {scores.shape}")
        if len(ids) != len(scores) or not len(ids):
            raise ValueError(f"{len(scores)} predictions for {len(ids)} identifiers")
        classes = predicted_classes(scores)
        if not np.isin(classes, (0, 1)).all():
            raise ValueError(f"predicted classes must be 0 or 1, got {sorted(set(classes.tolist()) - {0, 1})[:3]}")
        for identifier in ids:
            Nlvr2Id.parse(identifier)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{split}-predictions.csv"
        write_text_atomically(path, "".join(f"{i},{LABEL_NAMES[c]}\n" for i, c in zip(ids, classes.tolist())))
        return path


NLVR2 = register_benchmark(Nlvr2())


# --- Writing the layout -------------------------------------------------------------------------------------------

#: An image to write: a PIL image or a uint8 array ``[H, W]`` / ``[H, W, 3]`` (saved as PNG), or an encoded file's
#: bytes or path (written as they are, whatever their format: the release holds JPEGs named ``.png``).
ImageSource = Image.Image | np.ndarray | bytes | Path


@dataclass(frozen=True)
class Nlvr2Item:
    """One example to write: its identifier, sentence, label (``True``/``False``, None for a file without labels),
    left and right images (:data:`ImageSource`), and further JSON fields (``writer``, ``synset``, ...)."""

    identifier: str
    sentence: str
    label: bool | None
    left: ImageSource
    right: ImageSource
    fields: dict[str, Any] = field(default_factory=dict)


def _image_bytes(image: ImageSource, where: str) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, Path):
        return image.read_bytes()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"{where}: an image array must be uint8 [H, W] or [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"{where}: expected a PIL image, a uint8 array, bytes or a Path, got {type(image).__name__}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_nlvr2_layout(root: str | Path, split: str, items: Sequence[Nlvr2Item]) -> Path:
    """Write ``items`` as ``split`` of an NLVR2 tree at ``root``: ``root/data/<name>.json`` (one JSON object a line,
    in order; train lines get the ``directory`` of their images) and the pair images, once per pair, in
    ``root/images/train/<set % 100>/`` or ``root/images/<name>/``. Identifiers must be ``<name>-<set>-<pair>-
    <sentence>`` and unique; the sentences of one pair must give the same images. Other splits under ``root`` are
    kept; an existing file of this split raises. Everything is checked before anything is written. Returns the
    JSON file."""
    root, name = Path(root), _release_name(split)
    if not items:
        raise ValueError(f"{split}: no items to write")
    lines: list[str] = []
    images: dict[Path, tuple[bytes, str]] = {}
    seen: set[str] = set()
    for number, item in enumerate(items):
        where = f"{split}[{number}] ({item.identifier!r})"
        parsed = Nlvr2Id.parse(item.identifier)
        if parsed.split != name:
            raise ValueError(f"{where}: a {split} identifier starts with {name}-")
        if item.identifier in seen:
            raise ValueError(f"{where}: identifier written twice")
        seen.add(item.identifier)
        if not isinstance(item.sentence, str) or not item.sentence.strip():
            raise ValueError(f"{where}: the sentence must be a non-empty string")
        if item.label not in (True, False, None):
            raise ValueError(f"{where}: the label must be True, False or None, got {item.label!r}")
        reserved = {"identifier", "sentence", "label", "directory"} & set(item.fields)
        if reserved:
            raise ValueError(f"{where}: fields may not set {sorted(reserved)}")
        record: dict[str, Any] = {**item.fields, "identifier": item.identifier, "sentence": item.sentence}
        if item.label is not None:
            record["label"] = LABEL_NAMES[int(item.label)]
        folder = root / "images" / name
        if split == "train":
            record["directory"] = parsed.set % TRAIN_IMAGE_FOLDERS
            folder = folder / str(record["directory"])
        for image_name, image in zip(parsed.image_names, (item.left, item.right)):
            data = _image_bytes(image, f"{where} {image_name}")
            path = folder / image_name
            if path in images and images[path][0] != data:
                raise ValueError(f"{where}: gives other images for pair {image_name} than {images[path][1]}")
            images.setdefault(path, (data, item.identifier))
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    target = root / "data" / f"{name}.json"
    existing = [path for path in (target, *images) if path.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]}: already exists; write each NLVR2 split once")
    target.parent.mkdir(parents=True, exist_ok=True)
    for path, (data, _) in images.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    write_text_atomically(target, "".join(lines))
    return target


__all__ = ["LABEL_NAMES", "NLVR2", "RELEASE_NAMES", "ImageSource", "Nlvr2", "Nlvr2Id",
           "Nlvr2Item", "consistency", "image_folder", "json_file", "read_json_lines", "write_nlvr2_layout"]
