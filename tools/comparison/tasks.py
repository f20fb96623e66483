"""The comparison's tasks: seeded diagnostics, each needing one inductive bias, and small real data sets.

Every task is a :class:`TaskData`: train / validation / test :class:`Split` tensors, what the inputs are
(``kind``: ``image`` ``[B, 1, H, W]`` floats, ``tokens`` ``[B, L]`` ids with 0 = padding, ``points``
``[B, P, 3]``, ``field`` ``[B, N]`` values on an equispaced periodic grid), what is predicted (``target``:
``class`` pooled over the input, ``per_position`` classes with :data:`IGNORE` where a position has none,
``field`` values), the metric, and the specialists that the task is compared with.

Diagnostics (generated here, seeded):

- ``locality``: a 3×3 L-shaped glyph (4 orientations, the same pixel count) at a random place of a noisy 16×16
  image; classify the orientation (translation-equivariant local features);
- ``recall``: associative recall, ``k₁ v₁ … k_n v_n ? q`` → the value paired with key ``q`` (long-range lookup);
- ``parity``: the running parity of a bit sequence, at every position (sequential state);
- ``copy``: selective copying: the data tokens scattered among blanks, repeated in order at the marker slots;
- ``burgers``: the 1-D viscous Burgers operator ``u(·, 0) ↦ u(·, 1)`` (:mod:`.burgers`), trained at one
  resolution and tested at a finer one (zero-shot super-resolution), relative L2 error.

Real data: ``digits`` (scikit-learn's 8×8 digits), ``fashion-mnist`` (Debian ``dataset-fashion-mnist``,
``make fashion-mnist``), ``austen`` (sentences of Jane Austen's six novels labelled by novel, Debian
``r-cran-janeaustenr``, ``make janeaustenr``), ``shapes`` (point clouds of the library's procedural meshes).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .burgers import random_initial_conditions, solve_burgers
from .readers import read_idx, read_r_lazyload

IGNORE = -100  # a position without a target (PyTorch's ignore_index)
DATA_SEED = 0  # every task's data is drawn from this seed; the training seeds vary only the models


class TaskError(ValueError):
    """A task cannot be built (unknown name, missing data); the message says what to do."""


@dataclass
class Split:
    """One split: ``inputs`` (see the module doc for each kind) and ``targets`` (``[B]`` classes, ``[B, L]``
    classes or :data:`IGNORE`, or ``[B, N]`` field values)."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"split has {len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TaskData:
    """A task: its splits and how models read and are scored on it (module doc)."""

    name: str
    description: str
    kind: str  # image | tokens | points | field
    target: str  # class | per_position | field
    train: Split
    val: Split
    test: Split
    specialists: tuple[str, ...]
    classes: int | None = None
    vocab_size: int | None = None
    #: field tasks: the grid the models are trained on (the test split may be finer).
    train_resolution: int | None = None
    #: other test splits, scored and reported in the JSON (e.g. the field task at its training resolution).
    extra_tests: dict[str, Split] = field(default_factory=dict)
    #: the raw text of each split, for text baselines that tokenize themselves (TF-IDF).
    texts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """``relative_l2`` (lower is better) for fields, ``accuracy`` otherwise."""
        return "relative_l2" if self.target == "field" else "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"


@dataclass(frozen=True)
class TaskSizes:
    """How many samples the generated tasks draw per split, and the cap on the real ones' training split."""

    train: int = 2000
    val: int = 500
    test: int = 1000

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            if getattr(self, name) < 8:
                raise ValueError(f"TaskSizes.{name} must be >= 8, got {getattr(self, name)}")

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


QUICK_SIZES = TaskSizes(train=256, val=64, test=128)


def _splits(inputs: Tensor, targets: Tensor, sizes: TaskSizes) -> tuple[Split, Split, Split]:
    """The first ``train``, next ``val`` and last ``test`` rows as splits."""
    a, b = sizes.train, sizes.train + sizes.val
    return (Split(inputs[:a], targets[:a]), Split(inputs[a:b], targets[a:b]),
            Split(inputs[b:b + sizes.test], targets[b:b + sizes.test]))


# --------------------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------------------

#: The 3×3 glyphs of ``locality``: an L of three pixels in each of four orientations (equal ink, so that the
#: image's brightness tells nothing).
GLYPHS = np.array([[[1, 1, 0], [1, 0, 0], [0, 0, 0]],
                   [[0, 1, 1], [0, 0, 1], [0, 0, 0]],
                   [[0, 0, 0], [0, 0, 1], [0, 1, 1]],
                   [[0, 0, 0], [1, 0, 0], [1, 1, 0]]], dtype=np.float32)


def locality_images(count: int, rng: np.random.Generator, side: int = 16,
                    noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``(images [count, 1, side, side], labels [count])``: glyph ``label`` at a uniformly random place on
    Gaussian noise of std ``noise``."""
    labels = rng.integers(0, len(GLYPHS), count)
    images = rng.normal(0.0, noise, (count, 1, side, side)).astype(np.float32)
    rows, cols = rng.integers(0, side - 2, count), rng.integers(0, side - 2, count)
    for i in range(count):
        images[i, 0, rows[i]:rows[i] + 3, cols[i]:cols[i] + 3] += GLYPHS[labels[i]]
    return images, labels


RECALL_KEYS, RECALL_VALUES, RECALL_QUERY = 32, 16, 1  # ids: 0 pad, 1 query marker, keys, then values


def recall_sequences(count: int, rng: np.random.Generator, pairs: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [count, 2·pairs + 2], labels [count])``: ``pairs`` distinct keys each followed by its value, then
    the query marker and one of the keys; the label is that key's value (0..15)."""
    if pairs > RECALL_KEYS:
        raise ValueError(f"recall: at most {RECALL_KEYS} pairs, got {pairs}")
    ids = np.zeros((count, 2 * pairs + 2), dtype=np.int64)
    labels = np.zeros(count, dtype=np.int64)
    for i in range(count):
        keys = rng.permutation(RECALL_KEYS)[:pairs]
        values = rng.integers(0, RECALL_VALUES, pairs)
        ids[i, 0:2 * pairs:2] = 2 + keys
        ids[i, 1:2 * pairs:2] = 2 + RECALL_KEYS + values
        asked = rng.integers(0, pairs)
        ids[i, -2:] = RECALL_QUERY, 2 + keys[asked]
        labels[i] = values[asked]
    return ids, labels


def parity_sequences(count: int, rng: np.random.Generator, length: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [count, length], parities [count, length])``: bits as ids 1 (0) and 2 (1); the target at ``t`` is
    the parity of bits ``0..t``."""
    bits = rng.integers(0, 2, (count, length))
    return bits + 1, np.cumsum(bits, axis=1) % 2


COPY_BLANK, COPY_MARKER, COPY_SYMBOLS = 2, 1, 8  # ids: 0 pad, 1 marker, 2 blank, 3.. data symbols


def copy_sequences(count: int, rng: np.random.Generator, span: int = 40,
                   tokens: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [count, span + tokens], targets [count, span + tokens])``: ``tokens`` data symbols at random places
    among blanks in the first ``span`` positions, then ``tokens`` marker slots whose targets are the data symbols
    in order (0..7); every other target is :data:`IGNORE`."""
    ids = np.full((count, span + tokens), COPY_BLANK, dtype=np.int64)
    targets = np.full((count, span + tokens), IGNORE, dtype=np.int64)
    ids[:, span:] = COPY_MARKER
    for i in range(count):
        where = np.sort(rng.permutation(span)[:tokens])
        symbols = rng.integers(0, COPY_SYMBOLS, tokens)
        ids[i, where] = 3 + symbols
        targets[i, span:] = symbols
    return ids, targets


BURGERS_VISCOSITY, BURGERS_TIME, BURGERS_SOLVER_POINTS = 0.1, 1.0, 256


def burgers_fields(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(u(·, 0), u(·, 1))`` ``[count, 256]`` on the solver's grid; coarser grids are every k-th point of it."""
    initial = random_initial_conditions(count, BURGERS_SOLVER_POINTS, rng)
    final = solve_burgers(initial, BURGERS_VISCOSITY, BURGERS_TIME, dt=2e-3)
    return initial.astype(np.float32), final.astype(np.float32)


def subsample(fields: Tensor, points: int) -> Tensor:
    """``fields`` ``[B, N]`` on ``points`` equispaced points of the same periodic domain (every ``N/points``-th
    point; ``points`` must divide ``N``)."""
    if fields.shape[-1] % points:
        raise ValueError(f"cannot take {points} points of a {fields.shape[-1]}-point grid")
    return fields[..., :: fields.shape[-1] // points]


def build_locality(sizes: TaskSizes, data_dir: Path) -> TaskData:
    images, labels = locality_images(sizes.total, np.random.default_rng(DATA_SEED))
    return TaskData("locality", "a 3×3 glyph's orientation at a random place of a noisy 16×16 image", "image",
                    "class", *_splits(torch.from_numpy(images), torch.from_numpy(labels), sizes),
                    specialists=("resnet", "vit", "logreg"), classes=len(GLYPHS))


def build_recall(sizes: TaskSizes, data_dir: Path) -> TaskData:
    ids, labels = recall_sequences(sizes.total, np.random.default_rng(DATA_SEED))
    return TaskData("recall", "associative recall: 24 key–value pairs, then a key → its value (50 tokens)",
                    "tokens", "class", *_splits(torch.from_numpy(ids), torch.from_numpy(labels), sizes),
                    specialists=("transformer", "gru", "mamba"), classes=RECALL_VALUES,
                    vocab_size=2 + RECALL_KEYS + RECALL_VALUES)


def build_parity(sizes: TaskSizes, data_dir: Path) -> TaskData:
    ids, parity = parity_sequences(sizes.total, np.random.default_rng(DATA_SEED))
    return TaskData("parity", "running parity of 48 bits, at every position", "tokens", "per_position",
                    *_splits(torch.from_numpy(ids), torch.from_numpy(parity), sizes),
                    specialists=("transformer", "gru", "mamba"), classes=2, vocab_size=3)


def build_copy(sizes: TaskSizes, data_dir: Path) -> TaskData:
    ids, targets = copy_sequences(sizes.total, np.random.default_rng(DATA_SEED))
    return TaskData("copy", "selective copying: 8 symbols among 40 blanks, repeated in order at 8 slots",
                    "tokens", "per_position", *_splits(torch.from_numpy(ids), torch.from_numpy(targets), sizes),
                    specialists=("transformer", "gru", "mamba"), classes=COPY_SYMBOLS, vocab_size=3 + COPY_SYMBOLS)


BURGERS_TRAIN_POINTS, BURGERS_TEST_POINTS = 64, 128


def build_burgers(sizes: TaskSizes, data_dir: Path) -> TaskData:
    initial, final = (torch.from_numpy(a) for a in burgers_fields(sizes.total, np.random.default_rng(DATA_SEED)))
    train, val, test = _splits(initial, final, sizes)
    coarse, fine = BURGERS_TRAIN_POINTS, BURGERS_TEST_POINTS
    return TaskData(
        "burgers", f"viscous Burgers u(·,0) ↦ u(·,1), ν={BURGERS_VISCOSITY}: trained on {coarse} points, "
        f"tested on {fine} (zero-shot super-resolution)", "field", "field",
        Split(subsample(train.inputs, coarse), subsample(train.targets, coarse)),
        Split(subsample(val.inputs, coarse), subsample(val.targets, coarse)),
        Split(subsample(test.inputs, fine), subsample(test.targets, fine)),
        specialists=("fno",), train_resolution=coarse,
        extra_tests={f"test_{coarse}_points": Split(subsample(test.inputs, coarse), subsample(test.targets, coarse))})


# --------------------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------------------


def build_digits(sizes: TaskSizes, data_dir: Path) -> TaskData:
    """scikit-learn's 1797 8×8 digits (pixels 0..16 scaled to [0, 1]), shuffled once: 60% / 15% / 25%."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DATA_SEED).permutation(len(digits.target))
    images = torch.from_numpy((digits.images[order] / 16.0).astype(np.float32))[:, None]
    labels = torch.from_numpy(digits.target[order].astype(np.int64))
    n_train, n_val = int(0.6 * len(order)), int(0.15 * len(order))
    cap = min(sizes.train, n_train)
    return TaskData("digits", "scikit-learn's 8×8 handwritten digits", "image", "class",
                    Split(images[:cap], labels[:cap]), Split(images[n_train:n_train + n_val],
                                                             labels[n_train:n_train + n_val]),
                    Split(images[n_train + n_val:], labels[n_train + n_val:]),
                    specialists=("resnet", "vit", "logreg"), classes=10)


FASHION_FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
                 "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


def fashion_mnist_dir(data_dir: Path) -> Path:
    """The folder with Fashion-MNIST's idx files, or a :class:`TaskError` saying how to fetch it."""
    folder = data_dir / "fashion-mnist"
    missing = [name for name in FASHION_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TaskError(f"fashion-mnist: {folder} lacks {', '.join(missing)}; run `make fashion-mnist` (or pass "
                        "--data-dir, or leave the task out with --tasks)")
    return folder


def build_fashion_mnist(sizes: TaskSizes, data_dir: Path) -> TaskData:
    """Fashion-MNIST, 2×2-average-pooled to 14×14 (the CPU budget), pixels in [0, 1]: ``train`` + ``val``
    images from the training file, ``test`` from the test file."""
    folder = fashion_mnist_dir(data_dir)
    arrays = {key: read_idx(folder / name) for key, name in FASHION_FILES.items()}

    def images(pixels: np.ndarray) -> Tensor:
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None]
        return torch.nn.functional.avg_pool2d(x, 2)

    order = np.random.default_rng(DATA_SEED).permutation(len(arrays["train_labels"]))[:sizes.train + sizes.val]
    train_x, train_y = images(arrays["train_images"][order]), torch.from_numpy(arrays["train_labels"][order].astype(
        np.int64))
    test_order = np.random.default_rng(DATA_SEED).permutation(len(arrays["test_labels"]))[:sizes.test]
    return TaskData("fashion-mnist", "Fashion-MNIST, 10 classes, 28×28 pooled to 14×14", "image", "class",
                    Split(train_x[:sizes.train], train_y[:sizes.train]),
                    Split(train_x[sizes.train:], train_y[sizes.train:]),
                    Split(images(arrays["test_images"][test_order]),
                          torch.from_numpy(arrays["test_labels"][test_order].astype(np.int64))),
                    specialists=("resnet", "vit", "logreg"), classes=10)


AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
AUSTEN_MAX_WORDS, AUSTEN_MIN_WORDS, AUSTEN_VOCAB = 40, 6, 1000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z']+|[.,;:!?]")


def austen_dir(data_dir: Path) -> Path:
    """The janeaustenr package's ``data`` folder, or a :class:`TaskError` saying how to fetch it."""
    folder = data_dir / "janeaustenr" / "data"
    if not (folder / "Rdata.rdb").is_file():
        raise TaskError(f"austen: {folder} holds no Rdata.rdb; run `make janeaustenr` (or pass --data-dir, or "
                        "leave the task out with --tasks)")
    return folder


def novel_sentences(lines: list[str]) -> list[str]:
    """The sentences of a novel's lines: paragraphs (blank-line separated) split after ``.``, ``!``, ``?``;
    headings (``CHAPTER …``) and fragments under :data:`AUSTEN_MIN_WORDS` words dropped."""
    paragraphs = " ".join(line.strip() if line.strip() else "\n" for line in lines).split("\n")
    sentences = []
    for paragraph in paragraphs:
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            if len(sentence.split()) >= AUSTEN_MIN_WORDS and not sentence.isupper():
                sentences.append(sentence.strip())
    return sentences


def words(sentence: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``sentence``."""
    return _WORD.findall(sentence.lower())


def encode_sentences(sentences: list[str], vocabulary: dict[str, int], length: int) -> Tensor:
    """``[len(sentences), length]`` ids: 0 pads, 1 is an unknown word, the first ``length`` words kept."""
    ids = torch.zeros(len(sentences), length, dtype=torch.int64)
    for i, sentence in enumerate(sentences):
        tokens = [vocabulary.get(word, 1) for word in words(sentence)[:length]]
        ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    return ids


def build_austen(sizes: TaskSizes, data_dir: Path) -> TaskData:
    """Sentences of the six novels labelled by novel, the same count from each; a word vocabulary of the
    training split's 1000 most frequent words (ids 2..; 0 pad, 1 unknown)."""
    novels = read_r_lazyload(austen_dir(data_dir))
    missing = [name for name in AUSTEN_NOVELS if name not in novels]
    if missing:
        raise TaskError(f"austen: the janeaustenr data lacks {missing}")
    rng = np.random.default_rng(DATA_SEED)
    per_novel = math.ceil(sizes.total / len(AUSTEN_NOVELS))
    samples = []
    for label, name in enumerate(AUSTEN_NOVELS):
        sentences = novel_sentences(novels[name])
        if len(sentences) < per_novel:
            raise TaskError(f"austen: {name} has {len(sentences)} sentences, fewer than the {per_novel} asked for")
        samples += [(sentences[i], label) for i in rng.permutation(len(sentences))[:per_novel]]
    samples = [samples[i] for i in rng.permutation(len(samples))][:sizes.total]
    text = [sentence for sentence, _ in samples]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    counts = Counter(word for sentence in text[:sizes.train] for word in words(sentence))
    vocabulary = {word: 2 + i for i, (word, _) in enumerate(counts.most_common(AUSTEN_VOCAB))}
    ids = encode_sentences(text, vocabulary, AUSTEN_MAX_WORDS)
    a, b = sizes.train, sizes.train + sizes.val
    return TaskData("austen", "which of Jane Austen's six novels a sentence is from", "tokens", "class",
                    *_splits(ids, labels, sizes), specialists=("transformer", "gru", "mamba", "tfidf"),
                    classes=len(AUSTEN_NOVELS), vocab_size=2 + len(vocabulary),
                    texts={"train": text[:a], "val": text[a:b], "test": text[b:]})


SHAPE_POINTS = 256


def build_shapes(sizes: TaskSizes, data_dir: Path) -> TaskData:
    """Point clouds of the library's procedural meshes (random anisotropic scale and rotation), one class per
    shape (:func:`itnet_scale.data.demo.shape_point_cloud`)."""
    from itnet_scale.data.demo import shape_point_cloud
    from itnet_scale.data.meshes import SHAPES

    rng = np.random.default_rng(DATA_SEED)
    names = sorted(SHAPES)
    labels = rng.integers(0, len(names), sizes.total)
    points = np.stack([shape_point_cloud(names[label], SHAPE_POINTS, rng) for label in labels])
    return TaskData("shapes", f"which of {len(names)} procedural shapes a {SHAPE_POINTS}-point cloud samples",
                    "points", "class", *_splits(torch.from_numpy(points.astype(np.float32)),
                                                torch.from_numpy(labels.astype(np.int64)), sizes),
                    specialists=("pointnet",), classes=len(names))


#: Task name → builder ``(sizes, data_dir) → TaskData``, in the report's order.
TASKS: dict[str, Callable[[TaskSizes, Path], TaskData]] = {
    "locality": build_locality,
    "recall": build_recall,
    "parity": build_parity,
    "copy": build_copy,
    "burgers": build_burgers,
    "digits": build_digits,
    "fashion-mnist": build_fashion_mnist,
    "austen": build_austen,
    "shapes": build_shapes,
}


def build_task(name: str, sizes: TaskSizes, data_dir: Path) -> TaskData:
    """The task ``name``; an unknown name raises :class:`TaskError` naming the choices."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](sizes, Path(data_dir))
