"""A small NLVR2 tree in the release's exact formats, written by hand (not by the module's writer): JSON-lines
``.json`` files with the release's fields in its order, train images in numbered folders (``images/train/<n>/``),
dev images flat in ``dev/``, test1 in ``images/test1/``, a JPEG named ``.png``, and one dev pair with an image
missing (a dead URL)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def color(seed: int, size: tuple[int, int] = (10, 8)) -> Image.Image:
    """A smooth RGB test image that differs per seed (JPEG keeps it within a few levels)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    ramp = np.linspace(0, 30, size[0] * size[1]).reshape(size[1], size[0], 1)
    return Image.fromarray(np.clip(base + ramp, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=95)
    return buffer.getvalue()


def line(identifier: str, sentence: str, label: str | None, *, directory: int | None = None) -> str:
    """One line as the release writes it: its fields in the release's order (``label`` left out: no labels)."""
    record = {"validation": {"61": label or "True"}, "sentence": sentence,
              "left_url": "https://i.pinimg.com/originals/09/f2/21/left.jpg", "writer": "103", "label": label,
              "right_url": "http://www.beerbottlecollector.com/ESW/Images/4_bottles.JPG", "synset": "beer bottle",
              "query": "some beer bottles2", "identifier": identifier,
              "extra_validations": {"56": "True", "43": "False"}}
    if label is None:
        del record["label"]
    if directory is not None:
        record["directory"] = directory
    return json.dumps(record) + "\n"


# (identifier, sentence, label) per split, in file order. Pairs share images across their two sentences.
TRAIN = [("train-10171-0-0", "An image shows one leather pencil case, displayed open with writing implements tucked "
                             "inside.", "False"),
         ("train-10171-1-0", "An image shows one leather pencil case, displayed open with writing implements tucked "
                             "inside.", "True"),
         ("train-10171-0-1", "The left image contains exactly two pencil cases.", "True"),
         ("train-2-3-0", "There are exactly seven bottles not in a container.", "False")]
#: The numbered folder of each train set (train.json's ``directory``).
TRAIN_DIRECTORY = {10171: 71, 2: 2}
DEV = [("dev-850-0-0", "All the bottles are from the same brand.", "True"),
       ("dev-850-1-0", "All the bottles are from the same brand.", "False"),
       ("dev-850-2-0", "All the bottles are from the same brand.", "True"),   # its right image is missing
       ("dev-850-0-1", "Each image shows exactly one hatless man.", "False"),
       ("dev-77-3-0", "Two men are holding bottles to their mouths.", "True")]
TEST1 = [("test1-0-1-0", "There is a cake with at least two beer bottles in it.", "True"),
         ("test1-0-2-0", "There is a cake with at least two beer bottles in it.", "False")]
TEST2 = [("test2-189-0-0", "The left and right image contains seven beer bottles.", None),
         ("test2-189-3-1", "In one of the image, three brown bottles of beer are featured.", None)]
#: The dev pair whose left image is a JPEG named .png, and the one whose right image is absent.
DISGUISED_PAIR, MISSING_PAIR = "dev-850-1", "dev-850-2"


def pair_seed(stem: str, side: int) -> int:
    """The seed of the image ``<stem>-img<side>.png`` (so a test can recompute what a file shows)."""
    return sum(map(ord, stem)) * 2 + side


def write_pair(folder: Path, stem: str, missing: int | None = None, jpeg: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for side in (0, 1):
        if side != missing:
            (folder / f"{stem}-img{side}.png").write_bytes(
                encoded(color(pair_seed(stem, side)), "JPEG" if side == jpeg else "PNG"))


def write_nlvr2_folder(root: Path) -> Path:
    """The tree: ``data/{train,dev,test1,test2}.json``, ``images/train/<n>/``, ``dev/``, ``images/test1/``,
    ``test2/``. Returns ``root``."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.json").write_text("".join(
        line(i, s, label, directory=TRAIN_DIRECTORY[int(i.split("-")[1])]) for i, s, label in TRAIN))
    (root / "data" / "dev.json").write_text("".join(line(i, s, label) for i, s, label in DEV))
    (root / "data" / "test1.json").write_text("".join(line(i, s, label) for i, s, label in TEST1))
    (root / "data" / "test2.json").write_text("".join(line(i, s, label) for i, s, label in TEST2))
    for identifier, _, _ in TRAIN:
        stem = identifier.rsplit("-", 1)[0]
        write_pair(root / "images" / "train" / str(TRAIN_DIRECTORY[int(stem.split("-")[1])]), stem)
    for identifier, _, _ in DEV:
        stem = identifier.rsplit("-", 1)[0]
        write_pair(root / "dev", stem, missing=1 if stem == MISSING_PAIR else None,
                   jpeg=0 if stem == DISGUISED_PAIR else None)
    for identifier, _, _ in TEST1:
        write_pair(root / "images" / "test1", identifier.rsplit("-", 1)[0])
    for identifier, _, _ in TEST2:
        write_pair(root / "test2", identifier.rsplit("-", 1)[0])
    return root
