"""GLUE on a small folder in the real formats: every task's reader and its quirks, the metrics each task reports,
submission files, shard sets, and the errors bad files get."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest

from itnet_scale.data.shards import iter_shard_samples, read_index
from itnet_scale.data.stream import StreamConfig, decode_sample
from itnet_scale.tasks import BENCHMARKS, get_benchmark, metrics
from itnet_scale.tasks.glue import GLUE_TASKS, GlueBenchmark, write_glue_shards
from tests.tasks.glue_fixtures import FILES, MNLI_TRAIN_HEADER, tsv, write_glue_folder


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_glue_folder(tmp_path_factory.mktemp("glue"))


def glue(name: str) -> GlueBenchmark:
    benchmark = get_benchmark(name)
    assert isinstance(benchmark, GlueBenchmark)
    return benchmark


def test_every_task_is_registered_on_import_with_its_settings() -> None:
    assert set(GLUE_TASKS) <= set(BENCHMARKS)
    settings = {name: (glue(name).modality, glue(name).label_names, glue(name).primary_metric, glue(name).eval_splits,
                       glue(name).test_splits) for name in GLUE_TASKS}
    binary, validation, test = ("0", "1"), ("validation",), ("test",)
    nli = ("entailment", "neutral", "contradiction")
    assert settings == {
        "cola": ("text", binary, "matthews_corrcoef", validation, test),
        "sst2": ("text", binary, "accuracy", validation, test),
        "mrpc": ("text_pair", binary, "f1", validation, test),
        "qqp": ("text_pair", binary, "f1", validation, test),
        "stsb": ("text_pair", None, "pearson", validation, test),
        "mnli": ("text_pair", nli, "accuracy", ("validation_matched", "validation_mismatched"),
                 ("test_matched", "test_mismatched")),
        "qnli": ("text_pair", ("entailment", "not_entailment"), "accuracy", validation, test),
        "rte": ("text_pair", ("entailment", "not_entailment"), "accuracy", validation, test),
        "wnli": ("text_pair", binary, "accuracy", validation, test),
        "ax": ("text_pair", nli, "matthews_corrcoef", (), test),
    }
    assert glue("stsb").regression and glue("stsb").num_outputs == 1 and glue("mnli").num_outputs == 3
    assert glue("ax").train_split is None and glue("ax").predicted_by == "mnli"
    assert all(glue(name).train_split == "train" and glue(name).predicted_by is None for name in GLUE_TASKS[:-1])


# (task, split) → (examples, first id, first inputs, first label) as the fixture files hold them.
EXPECTED = {
    ("cola", "train"): (5, "0", {"text": "Our friends won't buy this analysis, let alone the next one we propose."}, 1),
    ("cola", "validation"): (3, "0", {"text": "The sailors rode the breeze clear of the rocks."}, 1),
    ("cola", "test"): (2, "0", {"text": "Bill whistled past the house."}, None),
    ("sst2", "train"): (3, "0", {"text": "hide new secretions from the parental units "}, 0),
    ("sst2", "test"): (2, "0", {"text": "uneasy mishmash of styles and genres ."}, None),
    ("mrpc", "validation"): (2, "0", {
        "text": "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
        "text_pair": '" The foodservice pie business does not fit our long-term growth strategy .'}, 1),
    ("mrpc", "test"): (2, "0", {"text": "PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief "
                                        "financial officer , will report directly to Mr So .",
                                "text_pair": "Current Chief Operating Officer Mike Butcher and Group Chief Financial "
                                             "Officer Alex Arena will report to So ."}, None),
    ("qqp", "validation"): (2, "40066", {"text": "Why are African-Americans so beautiful?",
                                         "text_pair": "Why are hispanics so beautiful?"}, 0),
    ("qqp", "test"): (2, "0", {"text": "Why do rockets look white?",
                               "text_pair": "Why are rockets and boosters painted white?"}, None),
    ("stsb", "train"): (4, "0", {"text": "A plane is taking off.", "text_pair": "An air plane is taking off."}, 5.0),
    ("stsb", "test"): (2, "0", {"text": "A girl is styling her hair.", "text_pair": "A girl is brushing her hair."},
                       None),
    ("mnli", "train"): (3, "0", {"text": "Conceptually cream skimming has two basic dimensions - product and "
                                         "geography.",
                                 "text_pair": "Product and geography are what make cream skimming work. "}, 1),
    ("mnli", "validation_mismatched"): (2, "0", {
        "text": "Your contribution helped make it possible for us to provide our students with a quality education.",
        "text_pair": "Your contributions were of no help with our students' education."}, 2),
    ("mnli", "test_mismatched"): (3, "0", {"text": "What have you decided, what are you going to do?",
                                           "text_pair": "So what's your decision?"}, None),
    ("qnli", "train"): (3, "0", {"text": "When did the third Digimon series begin?",
                                 "text_pair": "Unlike the two seasons before it and most of the seasons that followed, "
                                              "Digimon Tamers takes a darker and more realistic approach to its "
                                              "story."}, 1),
    ("rte", "validation"): (1, "0", {"text": "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung "
                                             "cancer at age 44, according to the Christopher Reeve Foundation.",
                                     "text_pair": "Christopher Reeve had an accident."}, 1),
    ("wnli", "train"): (4, "0", {"text": "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                                 "text_pair": "The carrot had a hole."}, 1),
    ("ax", "test"): (3, "0", {"text": "The cat sat on the mat.", "text_pair": "The cat did not sit on the mat."}, None),
}


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED))
def test_each_task_reads_its_files(glue_root: Path, task: str, split: str) -> None:
    count, first_id, first_inputs, first_label = EXPECTED[(task, split)]
    data = glue(task).read(glue_root, split)
    assert data.name == split and len(data.examples) == count and data.skipped == {}
    example = data.examples[0]
    assert (example.id, dict(example.inputs), example.label) == (first_id, first_inputs, first_label)
    assert data.labelled == (first_label is not None)
    assert [e.id for e in data.examples] == [str(i) for i in range(count)] or task == "qqp"
    if first_label is None:
        assert all(e.label is None for e in data.examples)
        with pytest.raises(ValueError, match=r"has no labels"):
            data.labels()


def test_cola_train_has_no_header_and_quotes_are_text(glue_root: Path) -> None:
    """A quoting reader would take the 4th sentence's opening quote for a quoted field and swallow the 5th row."""
    train = glue("cola").read(glue_root, "train")
    assert train.labels().tolist() == [1, 1, 0, 0, 1]
    assert [e.inputs["text"] for e in train.examples[3:]] == [
        '"Which book did you wonder whether John read?', 'Mary said "hello" to the children.']
    assert glue("cola").read(glue_root, "validation").examples[2].inputs["text"] == 'He said "no.'
    with (glue_root / "CoLA" / "train.tsv").open(newline="") as stream:  # what default quoting would have read
        assert len(list(csv.reader(stream, delimiter="\t"))) == 4


def test_mrpc_header_with_a_byte_order_mark(glue_root: Path) -> None:
    assert (glue_root / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    train = glue("mrpc").read(glue_root, "train")
    assert train.labels().tolist() == [1, 0, 1]
    assert train.examples[0].inputs["text"].startswith('Amrozi accused his brother , whom he called " the witness "')


def test_mnli_reads_gold_label_and_keeps_matched_and_mismatched_apart(glue_root: Path) -> None:
    mnli = glue("mnli")
    matched = mnli.read(glue_root, "validation_matched")
    mismatched = mnli.read(glue_root, "validation_mismatched")
    # row 2's first annotator says neutral; gold_label (the last of 16 columns) says entailment
    assert matched.labels().tolist() == [1, 2, 0] and mismatched.labels().tolist() == [2, 0]
    assert matched.examples[2].inputs["text"] == "uh i don't know i i have mixed emotions about him"
    assert mnli.read(glue_root, "train").labels().tolist() == [1, 0, 2]
    assert [len(mnli.read(glue_root, split).examples) for split in ("test_matched", "test_mismatched")] == [2, 3]
    assert mnli.file(glue_root, "validation_mismatched").name == "dev_mismatched.tsv"


def test_qqp_skips_broken_rows_counting_and_logging_them(glue_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="itnet_scale.tasks.glue"):
        train = glue("qqp").read(glue_root, "train")
    assert train.skipped == {"too few columns": 2}
    assert [e.id for e in train.examples] == ["133273", "402555", "360472", "183004"]
    assert train.labels().tolist() == [0, 1, 0, 1]
    path = glue_root / "QQP" / "train.tsv"
    assert f"skipped (too few columns): {path}:5: too few columns (5 tab-separated fields" in caplog.text
    assert f"{path}:6: too few columns (3 tab-separated fields" in caplog.text


def test_stsb_scores_are_floats(glue_root: Path) -> None:
    train = glue("stsb").read(glue_root, "train")
    labels = train.labels()
    assert labels.dtype == np.float64 and labels.tolist() == [5.0, 3.8, 3.8, 0.0]
    assert all(isinstance(e.label, float) for e in train.examples)


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("task", "name", "text", "message"), [
    ("sst2", "SST-2/train.tsv", tsv(("sentence", "label"), ("good", "1"), ("bad", "negative")),
     r"SST-2/train\.tsv:3: unknown label 'negative'; sst2's labels are \['0', '1'\]"),
    ("rte", "RTE/train.tsv", tsv(("index", "sentence1", "sentence2", "label"), ("0", "a", "b", "neutral")),
     r"RTE/train\.tsv:2: unknown label 'neutral'; rte's labels are \['entailment', 'not_entailment'\]"),
    ("cola", "CoLA/train.tsv", tsv(("gj04", "1", "", "Fine."), ("gj04", "0", "*", "A tab\tinside.")),
     r"CoLA/train\.tsv:2: too many columns \(5 tab-separated fields, the header has 4\); GLUE files are read "
     r"without quoting"),
    ("mnli", "MNLI/train.tsv", tsv(MNLI_TRAIN_HEADER, MNLI_TRAIN_HEADER[:11]),
     r"MNLI/train\.tsv:2: too few columns \(11 tab-separated fields, the header has 12\)"),
    ("qnli", "QNLI/train.tsv", tsv(("index", "question", "passage", "label"), ("0", "q", "s", "entailment")),
     r"QNLI/train\.tsv:1: the header has no column 'sentence' \(qnli's train file needs \['question', 'sentence', "
     r"'label', 'index'\]\); got \['index', 'question', 'passage', 'label'\]"),
    ("stsb", "STS-B/train.tsv", FILES["STS-B/train.tsv"].replace("\t3.800\n", "\tabout four\n", 1),
     r"STS-B/train\.tsv:3: score 'about four' is not a number"),
    ("stsb", "STS-B/train.tsv", FILES["STS-B/train.tsv"].replace("\t0.000\n", "\t-1.0\n"),
     r"STS-B/train\.tsv:5: score '-1\.0' is outside stsb's range \[0\.0, 5\.0\]"),
    ("stsb", "STS-B/train.tsv", FILES["STS-B/train.tsv"].replace("\t0.000\n", "\tnan\n"),
     r"STS-B/train\.tsv:5: score 'nan' is outside"),
    ("wnli", "WNLI/train.tsv", "", r"WNLI/train\.tsv: empty file; expected a header line"),
    ("wnli", "WNLI/train.tsv", tsv(("index", "sentence1", "sentence2", "label")), r"WNLI/train\.tsv: no examples"),
    ("qqp", "QQP/train.tsv", tsv(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("1", "2")),
     r"QQP/train\.tsv: no examples \(skipped: \{'too few columns': 1\}\)"),
])
def test_bad_files_raise_naming_file_and_line(tmp_path: Path, task: str, name: str, text: str, message: str) -> None:
    write(tmp_path, name, text)
    with pytest.raises(ValueError, match=message):
        glue(task).read(tmp_path, "train")


def test_undecodable_text_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\ngood\t1\n\xff\xfe bad bytes\t0\n")
    with pytest.raises(ValueError, match=r"SST-2/train\.tsv:\d+: cannot be read as tab-separated UTF-8"):
        glue("sst2").read(tmp_path, "train")


def test_missing_files_and_unknown_splits_are_named(tmp_path: Path, glue_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MNLI/dev_matched\.tsv: no such file; mnli reads "
                                                r"MNLI/dev_matched\.tsv under the GLUE folder"):
        glue("mnli").read(tmp_path, "validation_matched")
    with pytest.raises(ValueError, match=r"mnli has no split 'validation'; its splits are \['train', "
                                         r"'validation_matched', 'validation_mismatched', 'test_matched', "
                                         r"'test_mismatched'\]"):
        glue("mnli").read(glue_root, "validation")
    with pytest.raises(ValueError, match=r"ax has no split 'train'; its splits are \['test'\]; ax is predicted by a "
                                         r"model fine-tuned on mnli"):
        glue("ax").read(glue_root, "train")


def test_metrics_are_the_official_ones_for_each_task() -> None:
    rng = np.random.default_rng(0)
    labels2 = rng.integers(0, 2, 40)
    scores2 = rng.normal(size=(40, 2)) + 1.5 * np.eye(2)[labels2]
    cola = glue("cola").evaluate(scores2, labels2)
    assert cola == {"matthews_corrcoef": metrics.matthews_corrcoef(scores2, labels2),
                    "glue_score": metrics.matthews_corrcoef(scores2, labels2)}
    for task in ("sst2", "wnli", "qnli", "rte"):
        assert glue(task).evaluate(scores2, labels2) == {"accuracy": metrics.accuracy(scores2, labels2),
                                                         "glue_score": metrics.accuracy(scores2, labels2)}
    for task in ("mrpc", "qqp"):
        result = glue(task).evaluate(scores2, labels2)
        f1, acc = metrics.binary_f1(scores2, labels2), metrics.accuracy(scores2, labels2)
        assert result == {"f1": f1, "accuracy": acc, "glue_score": pytest.approx((f1 + acc) / 2)}
        assert result[glue(task).primary_metric] == f1 and f1 != acc
    labels3 = rng.integers(0, 3, 40)
    scores3 = rng.normal(size=(40, 3)) + np.eye(3)[labels3]
    assert glue("mnli").evaluate(scores3, labels3)["accuracy"] == metrics.accuracy(scores3, labels3)
    assert glue("mnli").evaluate(scores3.argmax(-1), labels3)["accuracy"] == metrics.accuracy(scores3, labels3)
    assert glue("ax").evaluate(scores3, labels3)["matthews_corrcoef"] == metrics.matthews_corrcoef(scores3, labels3)


def test_stsb_is_evaluated_on_clipped_scores() -> None:
    labels = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    raw = np.array([-1.0, 1.2, 2.0, 4.5, 7.0])
    clipped = np.clip(raw, 0, 5)
    result = glue("stsb").evaluate(raw[:, None], labels)  # a regression head's [N, 1] output
    assert result["pearson"] == pytest.approx(metrics.pearson(clipped, labels))
    assert result["pearson"] != pytest.approx(metrics.pearson(raw, labels))
    assert result["spearman"] == pytest.approx(metrics.spearman(clipped, labels))
    assert result["glue_score"] == pytest.approx((result["pearson"] + result["spearman"]) / 2)


def test_constant_scores_correlate_as_zero_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="itnet_scale.tasks.glue"):
        result = glue("stsb").evaluate(np.full(4, -0.3), np.array([0.0, 1.0, 3.0, 5.0]))
    assert result == {"pearson": 0.0, "spearman": 0.0, "glue_score": 0.0}
    assert "every prediction is 0.0; its pearson correlation with the labels is undefined" in caplog.text
    with pytest.raises(ValueError, match=r"correlation of a constant array is undefined"):
        glue("stsb").evaluate(np.array([1.0, 2.0]), np.array([3.0, 3.0]))  # constant labels are a bad eval set


@pytest.mark.parametrize(("task", "predictions", "message"), [
    ("mnli", np.zeros((3, 2)), r"mnli: predictions are class scores \[N, 3\] or classes \[N\] in 0\.\.2, got "
                               r"shape \[3, 2\]"),
    ("mnli", np.array([0, 3, 1]), r"classes \[N\] in 0\.\.2, got shape \[3\] of dtype int64"),
    ("sst2", np.array([[0.1, np.nan]]), r"sst2: predictions hold NaN or infinity"),
    ("stsb", np.zeros((3, 2)), r"stsb: regression predictions are values \[N\] or \[N, 1\], got shape \[3, 2\]"),
    ("cola", np.array(["1", "0"]), r"cola: predictions must be numbers"),
])
def test_bad_predictions_are_refused(task: str, predictions: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        glue(task).evaluate(predictions, np.zeros(len(predictions), dtype=np.int64))


def read_submission(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(("task", "split", "file_name"), [
    ("cola", "test", "CoLA.tsv"), ("sst2", "test", "SST-2.tsv"), ("mrpc", "test", "MRPC.tsv"),
    ("qqp", "test", "QQP.tsv"), ("mnli", "test_matched", "MNLI-m.tsv"), ("mnli", "test_mismatched", "MNLI-mm.tsv"),
    ("qnli", "test", "QNLI.tsv"), ("rte", "test", "RTE.tsv"), ("wnli", "test", "WNLI.tsv"), ("ax", "test", "AX.tsv"),
])
def test_submission_files_hold_label_strings(glue_root: Path, tmp_path: Path, task: str, split: str,
                                             file_name: str) -> None:
    benchmark = glue(task)
    data = benchmark.read(glue_root, split)
    ids = [e.id for e in data.examples]
    classes = np.arange(len(ids)) % benchmark.num_outputs
    scores = np.eye(benchmark.num_outputs)[classes] * 3.0 - 1.0
    path = benchmark.write_submission(tmp_path / "out", split, ids, scores)
    assert path == tmp_path / "out" / file_name
    rows = read_submission(path)
    assert rows[0] == ["index", "prediction"]
    assert rows[1:] == [[identifier, benchmark.label_names[c]] for identifier, c in zip(ids, classes)]
    if task in ("mnli", "ax"):
        assert rows[1][1] == "entailment" and rows[2][1] == "neutral"


def test_stsb_submission_is_clipped(glue_root: Path, tmp_path: Path) -> None:
    ids = [e.id for e in glue("stsb").read(glue_root, "test").examples]
    path = glue("stsb").write_submission(tmp_path, "test", ids, np.array([[5.73], [-0.2]]))
    assert read_submission(path) == [["index", "prediction"], ["0", "5.000"], ["1", "0.000"]]


def test_submission_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mnli: submission files are written for the test split\(s\) "
                                         r"\['test_matched', 'test_mismatched'\], got split 'validation_matched'"):
        glue("mnli").write_submission(tmp_path, "validation_matched", ["0"], np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"rte: 2 predictions for 3 ids"):
        glue("rte").write_submission(tmp_path, "test", ["0", "1", "2"], np.zeros((2, 2)))
    assert not list(tmp_path.iterdir())


def decoded(folder: Path, kind: str) -> list[dict]:
    limits = StreamConfig()
    samples = [decode_sample(raw, kind, limits) for raw in iter_shard_samples(folder)]
    assert all(reason is None for _, reason in samples)
    return [sample for sample, _ in samples]


def test_shards_round_trip_single_sentences_pairs_and_scores(glue_root: Path, tmp_path: Path) -> None:
    summary = write_glue_shards("cola", glue_root, "train", tmp_path / "cola", max_count=2)
    assert (summary.kind, summary.samples, summary.shards) == ("text_label", 5, 3)
    index = read_index(tmp_path / "cola")
    assert (index["benchmark"], index["split"], index["classes"]) == ("cola", "train", ["0", "1"])
    assert index["source"] == str(glue_root / "CoLA" / "train.tsv") and index["keys"] == ["cls", "txt"]
    examples = glue("cola").read(glue_root, "train").examples
    assert [(s["txt"], s["cls"]) for s in decoded(tmp_path / "cola", "text_label")] == [
        (e.inputs["text"], e.label) for e in examples]

    write_glue_shards(glue("mnli"), glue_root, "validation_mismatched", tmp_path / "mnli")
    examples = glue("mnli").read(glue_root, "validation_mismatched").examples
    assert [(s["txt"], s["pair.txt"], s["cls"]) for s in decoded(tmp_path / "mnli", "text_pair")] == [
        (e.inputs["text"], e.inputs["text_pair"], e.label) for e in examples]
    assert read_index(tmp_path / "mnli")["keys"] == ["cls", "pair.txt", "txt"]

    write_glue_shards("stsb", glue_root, "train", tmp_path / "stsb")
    index = read_index(tmp_path / "stsb")
    assert index["keys"] == ["pair.txt", "score", "txt"] and "classes" not in index
    assert [s["score"] for s in decoded(tmp_path / "stsb", "text_pair")] == [5.0, 3.8, 3.8, 0.0]


def test_shards_record_skipped_rows_and_refuse_unlabelled_splits(glue_root: Path, tmp_path: Path) -> None:
    summary = write_glue_shards("qqp", glue_root, "train", tmp_path / "qqp")
    assert summary.samples == 4 and summary.skipped == {"too few columns": 2}
    assert read_index(tmp_path / "qqp")["skipped"] == {"too few columns": 2}
    with pytest.raises(ValueError, match=r"sst2's 'test' split has no labels; shard sets for fine-tuning carry "
                                         r"labels"):
        write_glue_shards("sst2", glue_root, "test", tmp_path / "sst2")
    assert not (tmp_path / "sst2").exists()


def test_fixture_files_are_tab_separated_as_the_real_ones() -> None:
    """The fixture's own check: column counts per file as in the GLUE distribution."""
    counts = {name: {len(row) for row in csv.reader(io.StringIO(text.lstrip("\ufeff")), delimiter="\t",
                                                     quoting=csv.QUOTE_NONE)} for name, text in FILES.items()}
    assert counts["CoLA/train.tsv"] == {4} and counts["MNLI/train.tsv"] == {12}
    assert counts["MNLI/dev_matched.tsv"] == {16} and counts["MNLI/test_matched.tsv"] == {10}
    assert counts["STS-B/train.tsv"] == {10} and counts["STS-B/test.tsv"] == {9}
    assert counts["QQP/train.tsv"] == {6, 5, 3} and counts["MRPC/test.tsv"] == {5}
