"""What every fine-tuning benchmark provides: its splits as :class:`Example` lists, its official metrics and its
submission file. One module per benchmark family (``imagenet``, ``glue``, ``modelnet40``) registers its
benchmarks with :func:`register_benchmark`; the fine-tuning recipe only sees this interface.

An :class:`Example` holds the benchmark's own id (what the submission file names), the raw inputs of one modality
and the label (``None`` on splits without labels)::

    image       {"image": Path}                                  label: class index
    text        {"text": str}                                     label: class index, or a float (regression)
    text_pair   {"text": str, "text_pair": str}                   label: class index, or a float (regression)
    points      {"points": np.ndarray [P, 3] or [P, 6] float32}   label: class index
    image_text  {"image": Path, "text": str}                      label: soft targets ((class, score), ...)
    image_pair_text  {"images": (Path, Path), "text": str}        label: class index

An image may also be given decoded, as a uint8 array ``[C, H, W]`` (a streamed shard's sample).
``Example.annotation`` holds what an official metric reads beyond the label (VQA: the ten annotators' raw
answers, the answer and question types); None where the label is all it needs.

Predictions are what the model outputs per example, as numpy: class scores ``[N, C]`` (logits or
probabilities; top-k metrics need them) for classification, values ``[N]`` for regression.
:meth:`Benchmark.evaluate_split` scores a split's predictions; by default it is :meth:`Benchmark.evaluate` of the
split's labels, and a benchmark whose metric reads more (annotations, ids) overrides it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The input kinds an Example may hold (see the module doc).
MODALITIES = ("image", "text", "text_pair", "points", "image_text", "image_pair_text")


@dataclass(frozen=True)
class Example:
    """One sample of a benchmark split: its id, its raw inputs and its label (None where the split has none)."""

    id: str
    inputs: Mapping[str, Any]
    label: int | float | tuple[tuple[int, float], ...] | None = None
    annotation: Any = None


@dataclass(frozen=True)
class Split:
    """A split as read from the benchmark's files: its examples in file order, and the rows or files skipped,
    counted per reason (``{"too few columns": 3}``)."""

    name: str
    examples: list[Example]
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return bool(self.examples) and all(example.label is not None for example in self.examples)

    def labels(self) -> np.ndarray:
        """``[N]``: the labels (int64 for classes, float64 for regression); raises on a split without labels."""
        if not self.labelled:
            raise ValueError(f"split {self.name!r} has no labels (a test split?)")
        values = [example.label for example in self.examples]
        return np.asarray(values, dtype=np.float64 if isinstance(values[0], float) else np.int64)


class Benchmark(abc.ABC):
    """One benchmark task: name, modality, labels, splits, metrics and submission format.

    Subclasses set the class attributes and implement :meth:`read`, :meth:`evaluate` and
    :meth:`write_submission`. ``label_names`` is None for a regression task (STS-B); where the files name the classes
    (ImageNet), :meth:`for_root` gives the benchmark with its ``label_names``."""

    name: str
    modality: str
    label_names: tuple[str, ...] | None
    #: The metric that picks the best checkpoint and stops early (a key of :meth:`evaluate`'s result).
    primary_metric: str
    #: Splits with labels used to train, and the one(s) evaluated each epoch (names :meth:`read` accepts).
    #: ``train_split`` is None for a benchmark without training data, which :attr:`predicted_by` predicts.
    train_split: str | None = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    #: The benchmark whose fine-tuned model makes this one's predictions (GLUE's AX diagnostic: ``mnli``, same
    #: labels); None: a model fine-tuned on this benchmark's own ``train_split``.
    predicted_by: str | None = None

    @property
    def regression(self) -> bool:
        return self.label_names is None

    @property
    def model_task(self) -> str:
        """The registered task model that fine-tunes on this benchmark (``itnet_scale.models.registry.TASKS``):
        ``classification``, ``regression`` (no label names), or a benchmark's own (``vqa``, ``nlvr2``)."""
        return "regression" if self.regression else "classification"

    @property
    def num_outputs(self) -> int:
        """The head's outputs: one per class, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    def for_root(self, root: Path) -> Benchmark:
        """This benchmark as the files under ``root`` define it. A benchmark with a fixed label set returns itself;
        one whose files name its classes (ImageNet: the wnids of ``train/``) returns a copy whose ``label_names``
        are those classes, which the fine-tuning recipe then uses throughout (head size, submission file)."""
        return self

    @abc.abstractmethod
    def read(self, root: Path, split: str) -> Split:
        """Read ``split`` from the benchmark's files under ``root``; raises ``FileNotFoundError`` naming the file
        that is missing and ``ValueError`` naming the file and line that is malformed."""

    @abc.abstractmethod
    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The official metrics of ``predictions`` (see the module doc) against ``labels`` ``[N]``; includes
        :attr:`primary_metric`."""

    def metric_info(self) -> dict[str, str]:
        """What the metrics' names leave out and a reader of ``metrics.json`` needs (VQA: the revision of the
        official evaluation they follow); empty by default."""
        return {}

    def evaluate_split(self, predictions: np.ndarray, split: Split) -> dict[str, float]:
        """The official metrics of ``predictions`` (one row per example of ``split``, in its order); a split
        without labels raises. Override where the metric reads more than :meth:`Split.labels`."""
        return self.evaluate(predictions, split.labels())

    @abc.abstractmethod
    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """Write the benchmark's own submission file for ``split`` into ``folder``; returns its path."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, modality={self.modality!r})"


#: Benchmark name (the fine-tuning config's name: ``imagenet``, ``sst2``, ``modelnet40``, ...) → benchmark.
BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to :data:`BENCHMARKS` under its name (a name registered twice is a bug)."""
    if benchmark.modality not in MODALITIES:
        raise ValueError(f"benchmark {benchmark.name!r}: modality must be one of {MODALITIES}, "
                         f"got {benchmark.modality!r}")
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name raises listing the known ones."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "MODALITIES", "Benchmark", "Example", "Split", "get_benchmark", "register_benchmark"]
