"""GLUE: its nine tasks and the AX diagnostic as :class:`~itnet_scale.tasks.benchmark.Benchmark` s, read from the
files ``download_glue_data.py`` lays out under one root, with GLUE's official metrics and submission files.

Files (tab-separated, UTF-8)::

    CoLA/  SST-2/  MRPC/  QQP/  STS-B/  QNLI/  RTE/  WNLI/     train.tsv, dev.tsv, test.tsv
    MNLI/                                                       train.tsv, dev_matched.tsv, dev_mismatched.tsv,
                                                                test_matched.tsv, test_mismatched.tsv
    diagnostic/diagnostic.tsv                                   AX (premise/hypothesis pairs, no labels)

Splits are ``train``, ``validation`` (``dev.tsv``) and ``test``; MNLI's are ``train``, ``validation_matched``,
``validation_mismatched`` (both evaluated each epoch), ``test_matched`` and ``test_mismatched``; AX has only
``test`` and no training data: a model fine-tuned on ``mnli`` predicts it (its ``predicted_by``).

Reading. Files are read without quoting (``csv.QUOTE_NONE``: sentences hold stray ``"``, which a quoting reader
would take for the start of a field running over the next lines). Columns are found by their header's names
(MNLI's ``sentence1``/``sentence2`` are columns 8 and 9 of its 12 (train), 16 (dev: ``label1``…``label5`` then
``gold_label``) or 10 (test) columns; the label is ``gold_label``); CoLA's train and dev files have no header (source,
label, original judgement marker, sentence); MRPC's train and dev headers start with a byte-order mark
(``\\ufeffQuality``), so every file is read as ``utf-8-sig``. A row whose column count is not its header's is an
error naming the file and line, except in QQP, whose train file holds questions broken over two lines: those rows
are skipped, counted in :attr:`Split.skipped` (``too few columns``, ``too many columns``) and logged with file and
line. An unknown label, a score that is not a number in [0, 5], a header without a needed column, a missing or
empty file: each is an error naming the file (and line).

Examples. ``inputs`` is ``{"text": sentence}`` (CoLA, SST-2) or ``{"text": first, "text_pair": second}``; the
label is the index of the label string in :attr:`label_names` (GLUE's own strings, in GLUE's order), or STS-B's
float score (``label_names`` None: regression); test splits have no labels (``None``). ``id`` is the file's id
column (``index``; QQP's ``id``), which the submission file repeats, else the row's 0-based number (CoLA, SST-2 and
MRPC train/dev).

==========  =========  ==================================  ===============================  ==================
task        modality   labels                              metrics (primary first)          submission
==========  =========  ==================================  ===============================  ==================
cola        text       0, 1                                matthews_corrcoef                CoLA.tsv
sst2        text       0, 1                                accuracy                         SST-2.tsv
mrpc        text_pair  0, 1                                f1, accuracy                     MRPC.tsv
qqp         text_pair  0, 1                                f1, accuracy                     QQP.tsv
stsb        text_pair  (score in [0, 5])                   pearson, spearman                STS-B.tsv
mnli        text_pair  entailment, neutral, contradiction  accuracy (each of m, mm)         MNLI-m/MNLI-mm.tsv
qnli        text_pair  entailment, not_entailment          accuracy                         QNLI.tsv
rte         text_pair  entailment, not_entailment          accuracy                         RTE.tsv
wnli        text_pair  0, 1                                accuracy                         WNLI.tsv
ax          text_pair  MNLI's                              matthews_corrcoef (R3)           AX.tsv
==========  =========  ==================================  ===============================  ==================

Metrics. :meth:`GlueBenchmark.evaluate` returns the task's official metrics and ``glue_score``, their mean — the
task's score on the GLUE leaderboard, which averages a task's metrics — so a GLUE average is the mean of the tasks'
``glue_score``. The primary metric (best checkpoint, early stopping) is one official metric, not the mean: F1 for
MRPC and QQP (the metric of the positive, paraphrase class, which accuracy hides on QQP's 63% negatives) and Pearson
for STS-B (the first of its two; they move together, so choosing by either picks nearly the same checkpoint).
STS-B predictions are clipped to [0, 5] before they are evaluated and before they are submitted, so dev metrics are
those of the values a submission holds; constant predictions (an untrained head) have no defined correlation and
count as 0, with a warning, rather than stopping a run.

Submissions. :meth:`GlueBenchmark.write_submission` writes a test split's file under the name GLUE's server expects,
with an ``index\\tprediction`` header, one row per example in the order given: the label string (``entailment``,
``1``) or the clipped score. AX.tsv holds an MNLI model's predictions on the diagnostic set: read ``ax``'s test split
(pairs, MNLI's labels), predict with the model fine-tuned on ``mnli`` and write it with ``ax``'s writer.

Shards. :func:`write_glue_shards` writes a labelled split as a shard set (``text_label``: ``txt`` + ``cls``;
``text_pair``: ``txt`` + ``pair.txt`` + ``cls`` or ``score``; see :mod:`itnet_scale.data.shards`) so a large
training set streams as pretraining data does.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itnet_scale.data.shards import ShardSetSummary, ShardSetWriter
from itnet_scale.tasks.benchmark import Benchmark, Example, Split, get_benchmark, register_benchmark
from itnet_scale.tasks.metrics import accuracy, binary_f1, matthews_corrcoef, pearson, predicted_classes, spearman

logger = logging.getLogger(__name__)

#: STS-B's similarity scores: a label outside is an error; predictions are clipped to it.
SCORE_RANGE = (0.0, 5.0)
#: The header every submission file starts with.
SUBMISSION_HEADER = ("index", "prediction")

#: Metric name (a key of :meth:`GlueBenchmark.evaluate`'s result) → the official metric.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
CORRELATIONS = ("pearson", "spearman")


@dataclass(frozen=True)
class TsvLayout:
    """Where one kind of GLUE file keeps its fields, by column name: the text column(s) (one, or two for a pair),
    the label (None: no labels, a test file) and the id (None: ids are row numbers). ``columns`` names the columns
    of a file without a header line (CoLA's train and dev); None: the first line is the header."""

    texts: tuple[str, ...]
    label: str | None = None
    id: str | None = None
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GlueFile:
    """One split's file: its name in the task's folder, its layout and, for a test split, the submission file's
    name on GLUE's server (``CoLA.tsv``)."""

    name: str
    layout: TsvLayout
    submission: str | None = None


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each line of a tab-separated file read without quoting (a BOM is dropped);
    undecodable text or a field over csv's size limit raises ``ValueError`` naming the file and line."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as error:
            raise ValueError(f"{path}:{reader.line_num + 1}: cannot be read as tab-separated UTF-8 ({error})") \
                from None


class GlueBenchmark(Benchmark):
    """One GLUE task (see the module doc): ``folder`` under the GLUE root, ``files`` per split, ``metrics`` (the
    first is primary). ``skip_malformed_rows``: skip and count rows of the wrong column count instead of raising
    (QQP)."""

    def __init__(self, name: str, folder: str, modality: str, label_names: tuple[str, ...] | None,
                 metrics: tuple[str, ...], files: Mapping[str, GlueFile], *,
                 eval_splits: tuple[str, ...] = ("validation",), train_split: str | None = "train",
                 predicted_by: str | None = None, skip_malformed_rows: bool = False) -> None:
        unknown = [metric for metric in metrics if metric not in METRICS]
        if not metrics or unknown:
            raise ValueError(f"benchmark {name!r}: metrics must be some of {sorted(METRICS)}, got {list(metrics)}")
        named = [split for split in (train_split, *eval_splits) if split is not None]
        if not set(named) <= set(files):
            raise ValueError(f"benchmark {name!r}: splits {named} need a file each, got files for {sorted(files)}")
        self.name, self.folder, self.modality, self.label_names = name, folder, modality, label_names
        self.metrics = tuple(metrics)
        self.primary_metric = metrics[0]
        self.files = dict(files)
        self.train_split, self.eval_splits, self.predicted_by = train_split, tuple(eval_splits), predicted_by
        self.test_splits = tuple(split for split, file in files.items() if file.submission)
        self.skip_malformed_rows = skip_malformed_rows
        self._label_index = {label: index for index, label in enumerate(label_names or ())}

    def file(self, root: str | Path, split: str) -> Path:
        """The file of ``split`` under the GLUE root ``root``; an unknown split raises naming the known ones."""
        if split not in self.files:
            reason = f"; {self.name} is predicted by a model fine-tuned on {self.predicted_by}" \
                if self.predicted_by else ""
            raise ValueError(f"{self.name} has no split {split!r}; its splits are {list(self.files)}{reason}")
        return Path(root) / self.folder / self.files[split].name

    def read(self, root: Path, split: str) -> Split:
        path = self.file(root, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; {self.name} reads {self.folder}/{self.files[split].name} "
                                    f"under the GLUE folder {root} (the layout download_glue_data.py writes)")
        layout = self.files[split].layout
        rows = _tsv_rows(path)
        if layout.columns is None:
            first = next(rows, None)
            if first is None:
                raise ValueError(f"{path}: empty file; expected a header line")
            header = tuple(first[1])
        else:
            header = layout.columns
        wanted = [*layout.texts, *(name for name in (layout.label, layout.id) if name is not None)]
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"{path}:1: the header has no column {missing[0]!r} ({self.name}'s {split} file needs "
                             f"{wanted}); got {list(header)}")
        texts = [header.index(name) for name in layout.texts]
        label = header.index(layout.label) if layout.label is not None else None
        identifier = header.index(layout.id) if layout.id is not None else None
        keys = ("text", "text_pair")[:len(texts)]
        examples: list[Example] = []
        skipped: Counter[str] = Counter()
        for line, row in rows:
            if not row:  # a blank line holds no example
                continue
            if len(row) != len(header):
                problem = "too few columns" if len(row) < len(header) else "too many columns"
                message = f"{path}:{line}: {problem} ({len(row)} tab-separated fields, the header has {len(header)})"
                if not self.skip_malformed_rows:
                    raise ValueError(f"{message}; GLUE files are read without quoting")
                skipped[problem] += 1
                logger.warning("skipped (%s): %s", problem, message)
                continue
            examples.append(Example(
                id=row[identifier] if identifier is not None else str(len(examples)),
                inputs={key: row[column] for key, column in zip(keys, texts)},
                label=None if label is None else self._label(row[label], f"{path}:{line}")))
        if not examples:
            raise ValueError(f"{path}: no examples" + (f" (skipped: {dict(skipped)})" if skipped else ""))
        return Split(split, examples, dict(skipped))

    def _label(self, value: str, where: str) -> int | float:
        """A label string as the class index of :attr:`label_names`, or a score as a float in :data:`SCORE_RANGE`."""
        if self.label_names is not None:
            if value not in self._label_index:
                raise ValueError(f"{where}: unknown label {value!r}; {self.name}'s labels are {list(self.label_names)}")
            return self._label_index[value]
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: score {value!r} is not a number") from None
        if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:  # NaN fails this too
            raise ValueError(f"{where}: score {value!r} is outside {self.name}'s range {list(SCORE_RANGE)}")
        return score

    def _predictions(self, predictions: np.ndarray) -> np.ndarray:
        """Checked predictions: class scores ``[N, C]`` or classes ``[N]`` as given; regression values ``[N]`` (or
        ``[N, 1]``) as float64 ``[N]`` clipped to :data:`SCORE_RANGE`."""
        predictions = np.asarray(predictions)
        if predictions.dtype.kind not in "fiu":
            raise ValueError(f"{self.name}: predictions must be numbers, got dtype {predictions.dtype}")
        if predictions.dtype.kind == "f" and not np.isfinite(predictions).all():
            raise ValueError(f"{self.name}: predictions hold NaN or infinity")
        if self.label_names is None:
            if predictions.ndim == 2 and predictions.shape[1] == 1:
                predictions = predictions[:, 0]
            if predictions.ndim != 1:
                raise ValueError(f"{self.name}: regression predictions are values [N] or [N, 1], got shape "
                                 f"{list(predictions.shape)}")
            return np.clip(predictions.astype(np.float64), *SCORE_RANGE)
        classes = len(self.label_names)
        if predictions.ndim == 2 and predictions.shape[1] == classes:
            return predictions
        if predictions.ndim == 1 and predictions.dtype.kind in "iu" and (
                predictions.size == 0 or 0 <= predictions.min() <= predictions.max() < classes):
            return predictions
        raise ValueError(f"{self.name}: predictions are class scores [N, {classes}] or classes [N] in "
                         f"0..{classes - 1}, got shape {list(predictions.shape)} of dtype {predictions.dtype}")

    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The official metrics (see the module doc) and ``glue_score``, their mean."""
        values, labels = self._predictions(predictions), np.asarray(labels)
        results = {}
        for metric in self.metrics:
            if (metric in CORRELATIONS and len(values) == len(labels) > 0 and np.ptp(values) == 0
                    and np.ptp(labels) > 0):
                logger.warning("%s: every prediction is %s; its %s correlation with the labels is undefined and "
                               "counts as 0", self.name, values[0], metric)
                results[metric] = 0.0
            else:
                results[metric] = METRICS[metric](values, labels)
        results["glue_score"] = float(np.mean([results[metric] for metric in self.metrics]))
        return results

    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """Write ``folder/<GLUE name>.tsv`` (``index\\tprediction`` rows, label strings or clipped scores) for a
        test split; returns its path."""
        name = self.files[split].submission if split in self.files else None
        if name is None:
            raise ValueError(f"{self.name}: submission files are written for the test split(s) "
                             f"{list(self.test_splits)}, got split {split!r}")
        values = self._predictions(predictions)
        if len(values) != len(ids):
            raise ValueError(f"{self.name}: {len(values)} predictions for {len(ids)} ids")
        if self.label_names is None:
            answers = [f"{value:.3f}" for value in values]
        else:
            answers = [self.label_names[index] for index in predicted_classes(values)]
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = ["\t".join(SUBMISSION_HEADER), *(f"{identifier}\t{answer}" for identifier, answer in zip(ids, answers))]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return path


def write_glue_shards(benchmark: str | GlueBenchmark, root: str | Path, split: str, output: str | Path,
                      **writer_options: Any) -> ShardSetSummary:
    """Write the labelled ``split`` of a GLUE task (a name or the benchmark) under the GLUE root ``root`` as a shard
    set in ``output``: ``text_label`` (``txt`` + ``cls``) for single sentences, ``text_pair`` (``txt`` + ``pair.txt``
    + ``cls``, or ``score`` for STS-B) for pairs, in file order. The index records the source file, ``benchmark``,
    ``split``, ``classes`` (the label strings; not for STS-B) and the rows the reader skipped.

    ``writer_options`` go to :class:`~itnet_scale.data.shards.ShardSetWriter` (``max_count``, ``overwrite``, ...).
    A split without labels (test) raises ``ValueError``: a shard set for fine-tuning carries labels.
    """
    task = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if not isinstance(task, GlueBenchmark):
        raise ValueError(f"benchmark {task.name!r} is not a GLUE task")
    data = task.read(Path(root), split)
    if not data.labelled:
        raise ValueError(f"{task.name}'s {split!r} split has no labels; shard sets for fine-tuning carry labels "
                         "(read the split's file with the benchmark to predict it)")
    pair = task.modality == "text_pair"
    info: dict[str, Any] = {"source": str(task.file(root, split)), "benchmark": task.name, "split": split}
    if task.label_names is not None:
        info["classes"] = list(task.label_names)
    with ShardSetWriter(output, "text_pair" if pair else "text_label", info=info, **writer_options) as writer:
        writer.skipped.update(data.skipped)  # counted and logged with file and line when read
        for example in data.examples:
            members = {"txt": example.inputs["text"]}
            if pair:
                members["pair.txt"] = example.inputs["text_pair"]
            if task.regression:
                members["score"] = repr(float(example.label))
            else:
                members["cls"] = str(example.label)
            writer.write(members)
    return writer.summary


def _standard_files(labelled: TsvLayout, test: TsvLayout, submission: str) -> dict[str, GlueFile]:
    return {"train": GlueFile("train.tsv", labelled), "validation": GlueFile("dev.tsv", labelled),
            "test": GlueFile("test.tsv", test, submission)}


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
NLI = ("entailment", "neutral", "contradiction")
#: CoLA's train and dev files have no header; these name their columns.
COLA_COLUMNS = ("source", "label", "original_judgement", "sentence")
SENTENCE_PAIR = ("sentence1", "sentence2")

_MNLI_LABELLED = TsvLayout(SENTENCE_PAIR, label="gold_label", id="index")
_MNLI_TEST = TsvLayout(SENTENCE_PAIR, id="index")

register_benchmark(GlueBenchmark(
    "cola", "CoLA", "text", BINARY, ("matthews_corrcoef",),
    _standard_files(TsvLayout(("sentence",), label="label", columns=COLA_COLUMNS),
                    TsvLayout(("sentence",), id="index"), "CoLA.tsv")))
register_benchmark(GlueBenchmark(
    "sst2", "SST-2", "text", BINARY, ("accuracy",),
    _standard_files(TsvLayout(("sentence",), label="label"), TsvLayout(("sentence",), id="index"), "SST-2.tsv")))
register_benchmark(GlueBenchmark(
    "mrpc", "MRPC", "text_pair", BINARY, ("f1", "accuracy"),
    _standard_files(TsvLayout(("#1 String", "#2 String"), label="Quality"),
                    TsvLayout(("#1 String", "#2 String"), id="index"), "MRPC.tsv")))
register_benchmark(GlueBenchmark(
    "qqp", "QQP", "text_pair", BINARY, ("f1", "accuracy"),
    _standard_files(TsvLayout(("question1", "question2"), label="is_duplicate", id="id"),
                    TsvLayout(("question1", "question2"), id="id"), "QQP.tsv"),
    skip_malformed_rows=True))
register_benchmark(GlueBenchmark(
    "stsb", "STS-B", "text_pair", None, ("pearson", "spearman"),
    _standard_files(TsvLayout(SENTENCE_PAIR, label="score", id="index"), TsvLayout(SENTENCE_PAIR, id="index"),
                    "STS-B.tsv")))
register_benchmark(GlueBenchmark(
    "mnli", "MNLI", "text_pair", NLI, ("accuracy",),
    {"train": GlueFile("train.tsv", _MNLI_LABELLED),
     "validation_matched": GlueFile("dev_matched.tsv", _MNLI_LABELLED),
     "validation_mismatched": GlueFile("dev_mismatched.tsv", _MNLI_LABELLED),
     "test_matched": GlueFile("test_matched.tsv", _MNLI_TEST, "MNLI-m.tsv"),
     "test_mismatched": GlueFile("test_mismatched.tsv", _MNLI_TEST, "MNLI-mm.tsv")},
    eval_splits=("validation_matched", "validation_mismatched")))
register_benchmark(GlueBenchmark(
    "qnli", "QNLI", "text_pair", ENTAILMENT, ("accuracy",),
    _standard_files(TsvLayout(("question", "sentence"), label="label", id="index"),
                    TsvLayout(("question", "sentence"), id="index"), "QNLI.tsv")))
register_benchmark(GlueBenchmark(
    "rte", "RTE", "text_pair", ENTAILMENT, ("accuracy",),
    _standard_files(TsvLayout(SENTENCE_PAIR, label="label", id="index"), TsvLayout(SENTENCE_PAIR, id="index"),
                    "RTE.tsv")))
register_benchmark(GlueBenchmark(
    "wnli", "WNLI", "text_pair", BINARY, ("accuracy",),
    _standard_files(TsvLayout(SENTENCE_PAIR, label="label", id="index"), TsvLayout(SENTENCE_PAIR, id="index"),
                    "WNLI.tsv")))
register_benchmark(GlueBenchmark(
    "ax", "diagnostic", "text_pair", NLI, ("matthews_corrcoef",),
    {"test": GlueFile("diagnostic.tsv", TsvLayout(SENTENCE_PAIR, id="index"), "AX.tsv")},
    eval_splits=(), train_split=None, predicted_by="mnli"))

#: The GLUE benchmarks' names, in GLUE's order (AX last).
GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "ax")

__all__ = ["GLUE_TASKS", "METRICS", "SCORE_RANGE", "SUBMISSION_HEADER", "GlueBenchmark", "GlueFile", "TsvLayout",
           "write_glue_shards"]
