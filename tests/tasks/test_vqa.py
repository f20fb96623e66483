"""The VQA v2 benchmark on a small download in the real layout: the reader (splits, image paths, the places files are
looked for, its errors), the answer vocabulary and soft targets, minival, the official answer normalization and
accuracy of both evaluation revisions (worked out by hand), the results file and the layout writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from itnet_scale.tasks import BENCHMARKS, get_benchmark
from itnet_scale.tasks.imagenet import load_image
from itnet_scale.tasks.vqa import (
    CONTRACTIONS,
    VQAV2,
    VQAAnnotation,
    VQAQuestion,
    VQASettings,
    VQAv2,
    answer_vocabulary,
    minival_image_ids,
    normalize_answer,
    question_accuracy,
    read_results,
    soft_score,
    soft_targets,
    strip_punctuation,
    vqa_accuracy,
    write_vqa_layout,
)
from tests.tasks.vqa_fixtures import VAL, VAL_IMAGES, color, q, write_vqa_root


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vqa_root(tmp_path_factory.mktemp("vqa"))


@pytest.fixture
def copy(download: Path, tmp_path: Path) -> Path:
    """A copy of the download that a test may damage."""
    return Path(shutil.copytree(download, tmp_path / "vqa"))


def benchmark(root: Path, **settings) -> VQAv2:
    return VQAv2(VQASettings(**settings)).for_root(root)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- Reading --------------------------------------------------------------------------------------------------------


def test_registry_entry() -> None:
    assert get_benchmark("vqav2") is VQAV2 and BENCHMARKS["vqav2"] is VQAV2
    assert (VQAV2.modality, VQAV2.primary_metric, VQAV2.train_split) == ("image_text", "accuracy", "train")
    assert VQAV2.eval_splits == ("validation",) and VQAV2.test_splits == ("test-dev", "test")
    with pytest.raises(ValueError, match=r"for_root\(root\)"):
        VQAV2.label_names  # noqa: B018


def test_real_file_layout(download: Path) -> None:
    questions = json.loads((download / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    annotations = json.loads((download / "v2_mscoco_train2014_annotations.json").read_text())
    assert questions["data_subtype"] == "train2014" and questions["questions"][0] == {
        "image_id": 9, "question": "What color is the bus?", "question_id": 9000}
    first = annotations["annotations"][0]
    assert first["question_id"] == 9000 and first["multiple_choice_answer"] == "red"
    assert first["answers"][6] == {"answer": "Red.", "answer_confidence": "yes", "answer_id": 7}
    assert (download / "train2014" / "COCO_train2014_000000000009.jpg").is_file()
    assert (download / "test2015" / "COCO_test2015_000000000003.jpg").is_file()
    assert not (download / "v2_mscoco_test2015_annotations.json").exists()
    assert sorted(p.name for p in download.iterdir() if p.is_dir()) == ["test2015", "train2014", "val2014"]


def test_train_split_soft_targets_and_drops(download: Path) -> None:
    task = benchmark(download, min_answer_count=2)
    assert task.label_names == ("yes", "red")  # yes: 3 questions, red: 2 (by count, not alphabetically)
    train = task.read(download, "train")
    # 25000 ("2"/"3"), 30000 (frisbee) and 9002 ("1") have no answer in the vocabulary: dropped from train only
    assert [e.id for e in train.examples] == ["9000", "9001", "25001", "30001", "30002", "9003"]
    assert train.skipped == {"no answer in the vocabulary": 3}
    labels = {e.id: e.label for e in train.examples}
    assert labels == {"9000": ((1, 1.0),),        # 6 "red" + 3 "Red." (normalized); "dark red" is not a class
                      "9001": ((0, 1.0),), "25001": ((0, 0.9),), "30001": ((1, 1.0),),
                      "30002": ((0, 1.0),),       # ten "Yes"
                      "9003": ((0, 1.0),)}        # the one "no" is not a class
    first = train.examples[0]
    assert first.inputs == {"image": download / "train2014" / "COCO_train2014_000000000009.jpg",
                            "text": "What color is the bus?"}
    assert load_image(first.inputs["image"]).size == (8, 6)
    assert first.annotation == VQAAnnotation(("red",) * 6 + ("Red.",) * 3 + ("dark red",), "other",
                                             "what color is the", "red")


def test_vocabulary_threshold_and_order(download: Path) -> None:
    assert answer_vocabulary(download, VQASettings(min_answer_count=1)) == ("yes", "red", "1", "2", "frisbee", "no")
    assert answer_vocabulary(download, VQASettings(min_answer_count=3)) == ("yes",)
    with pytest.raises(ValueError, match=r"v2_mscoco_train2014_annotations\.json.*min_answer_count=4"):
        answer_vocabulary(download, VQASettings(min_answer_count=4))
    train = benchmark(download, min_answer_count=1).read(download, "train")
    assert len(train.examples) == 9 and train.skipped == {}
    labels = {e.id: e.label for e in train.examples}
    assert labels["25000"] == ((3, 1.0),)                 # seven "2"/"two"; "3"/"three" is not a class
    assert labels["25001"] == ((0, 0.9), (5, 1.0))         # in class order
    assert labels["9003"] == ((0, 1.0), (5, 0.3))
    # train + val: yes 3 + 2, red 2 + 1, then "1" and no 1 + 1 each (ties by the string)
    assert answer_vocabulary(download, VQASettings(min_answer_count=2, vocabulary_splits="train+validation")) == (
        "yes", "red", "1", "no")


def test_soft_score_table() -> None:
    assert [soft_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    index = {"a1": 0, "b2": 1, "c3": 2, "d4": 3, "e5": 4}
    answers = ["a1"] + ["b2"] * 2 + ["C3"] * 3 + ["d4"] * 4  # "C3" normalizes to "c3"
    assert soft_targets(answers, index) == ((0, 0.3), (1, 0.6), (2, 0.9), (3, 1.0))
    assert soft_targets(["e5"] * 10, index) == ((4, 1.0),)
    assert soft_targets(["zebra"] * 10, index) == ()


def test_evaluation_splits_keep_every_question(download: Path) -> None:
    task = benchmark(download, min_answer_count=2)
    validation = task.read(download, "validation")
    assert [e.id for e in validation.examples] == ["42000", "42001", "73000", "74000", "80000", "81000", "81001"]
    assert validation.skipped == {}
    assert validation.examples[0].label == ()  # "2"/"3" are not classes, the question is still scored
    assert validation.examples[0].inputs["image"] == download / "val2014" / "COCO_val2014_000000000042.jpg"
    assert validation.labelled


def test_test_splits_have_no_labels(download: Path) -> None:
    for split, count in (("test-dev", 2), ("test", 3)):
        data = VQAV2.read(download, split)  # needs no vocabulary (no train files)
        assert len(data.examples) == count and not data.labelled
        assert all(e.label is None and e.annotation is None for e in data.examples)
        assert data.examples[0].inputs == {"image": download / "test2015" / "COCO_test2015_000000000001.jpg",
                                           "text": "What animal is this?"}
    assert [e.id for e in VQAV2.read(download, "test").examples] == ["1000", "2000", "3000"]


def test_official_zip_subfolders(copy: Path) -> None:
    """Question files in Questions/, annotations in Annotations/, images in Images/mscoco/<subset>/."""
    for folder, pattern in (("Questions", "*_questions.json"), ("Annotations", "*_annotations.json")):
        (copy / folder).mkdir()
        for path in copy.glob(pattern):
            path.rename(copy / folder / path.name)
    (copy / "Images" / "mscoco").mkdir(parents=True)
    for subset in ("train2014", "val2014", "test2015"):
        (copy / subset).rename(copy / "Images" / "mscoco" / subset)
    task = benchmark(copy, min_answer_count=2)
    assert task.label_names == ("yes", "red")
    train = task.read(copy, "train")
    assert train.examples[0].inputs["image"] == copy / "Images/mscoco/train2014/COCO_train2014_000000000009.jpg"
    assert len(task.read(copy, "test").examples) == 3


# --- Reader errors ----------------------------------------------------------------------------------------------


def test_missing_files_are_named(copy: Path) -> None:
    (copy / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"v2_mscoco_val2014_annotations\.json.*looked in.*Annotations"):
        benchmark(copy, min_answer_count=2).read(copy, "validation")
    (copy / "v2_mscoco_train2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"v2_mscoco_train2014_annotations\.json"):
        VQAV2.for_root(copy)  # the vocabulary needs the train annotations
    (copy / "v2_OpenEnded_mscoco_test-dev2015_questions.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"v2_OpenEnded_mscoco_test-dev2015_questions\.json.*Questions"):
        VQAV2.read(copy, "test-dev")
    shutil.rmtree(copy / "test2015")
    with pytest.raises(FileNotFoundError, match=r"test2015: no such COCO image folder"):
        VQAV2.read(copy, "test")


def test_missing_image_is_an_error_naming_it(copy: Path) -> None:
    (copy / "val2014" / "COCO_val2014_000000000081.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"COCO_val2014_000000000081\.jpg: no such image \(of question "
                                                r"81000; 1 of the 5 images of val2014 are missing\)"):
        benchmark(copy, min_answer_count=2).read(copy, "validation")


def test_question_without_annotation(copy: Path) -> None:
    edit_json(copy / "v2_mscoco_val2014_annotations.json", lambda d: d["annotations"].pop(2))
    with pytest.raises(ValueError, match=r"v2_mscoco_val2014_annotations\.json: no annotation for question 73000"):
        benchmark(copy, min_answer_count=2).read(copy, "validation")


def test_annotation_without_question(copy: Path) -> None:
    edit_json(copy / "v2_OpenEnded_mscoco_val2014_questions.json", lambda d: d["questions"].pop())
    with pytest.raises(ValueError, match=r"annotates question 81001, which .*val2014_questions\.json does not list"):
        benchmark(copy, min_answer_count=2).read(copy, "validation")


def test_annotation_without_ten_answers(copy: Path) -> None:
    edit_json(copy / "v2_mscoco_val2014_annotations.json", lambda d: d["annotations"][1]["answers"].pop())
    with pytest.raises(ValueError, match=r"val2014_annotations\.json: question 42001: expected 10 answers, got 9"):
        benchmark(copy, min_answer_count=2).read(copy, "validation")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["annotations"][0].pop("answer_type"), r"question 9000: 'answer_type' must be a string, got None"),
    (lambda d: d["annotations"][0]["answers"][3].update(answer=7), r"question 9000, answers\[3\]: 'answer' must be"),
    (lambda d: d["annotations"][1].update(image_id=25), r"question 9001 is of image 25, but .* says image 9"),
    (lambda d: d["annotations"].append(d["annotations"][0]), r"question 9000: annotated twice"),
])
def test_malformed_annotations(copy: Path, change, message: str) -> None:
    edit_json(copy / "v2_mscoco_train2014_annotations.json", change)
    with pytest.raises(ValueError, match=message):
        answer_vocabulary(copy)


def test_malformed_questions(copy: Path) -> None:
    path = copy / "v2_OpenEnded_mscoco_test2015_questions.json"
    edit_json(path, lambda d: d["questions"].append(d["questions"][1]))
    with pytest.raises(ValueError, match=r"test2015_questions\.json: questions\[3\]: question 2000 is listed twice"):
        VQAV2.read(copy, "test")
    edit_json(path, lambda d: d["questions"][0].update(question_id="1000"))
    with pytest.raises(ValueError, match=r"questions\[0\]: 'question_id' must be an integer, got '1000'"):
        VQAV2.read(copy, "test")
    path.write_text('{"questions": [')
    with pytest.raises(ValueError, match=r"test2015_questions\.json: not valid JSON"):
        VQAV2.read(copy, "test")
    path.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match=r"expected a JSON object with a 'questions' list"):
        VQAV2.read(copy, "test")


def test_unknown_split_and_settings() -> None:
    with pytest.raises(ValueError, match=r"unknown VQA v2 split 'val'"):
        VQAV2.read(Path("nowhere"), "val")
    with pytest.raises(ValueError, match=r"split 'minival' needs vqav2.minival_images > 0"):
        VQAV2.read(Path("nowhere"), "minival")
    for settings, message in (({"min_answer_count": 0}, "vqav2.min_answer_count must be an integer >= 1"),
                              ({"minival_images": -1}, "vqav2.minival_images must be an integer >= 0"),
                              ({"seed": 1.5}, "vqav2.seed must be an integer >= 0"),
                              ({"revision": "2019"}, r"vqav2.revision must be one of \('2016', '2021'\)"),
                              ({"vocabulary_splits": "all"}, "vqav2.vocabulary_splits must be one of")):
        with pytest.raises(ValueError, match=message):
            VQASettings(**settings)
    assert VQASettings(revision=2016).revision == "2016"  # an unquoted YAML year


# --- Minival ------------------------------------------------------------------------------------------------------


def test_minival_is_seeded_and_disjoint(download: Path) -> None:
    task = benchmark(download, min_answer_count=2, minival_images=2, seed=0)
    assert task.eval_splits == ("minival",)
    assert minival_image_ids(VAL_IMAGES, 2, 0) == {80, 81}  # the draw is part of a run's reproducibility
    assert minival_image_ids(reversed(VAL_IMAGES), 2, 0) == {80, 81}  # from the sorted ids, not the order given
    assert len({minival_image_ids(VAL_IMAGES, 2, seed) for seed in range(4)}) > 1
    minival = task.read(download, "minival")
    assert [e.id for e in minival.examples] == ["80000", "81000", "81001"]  # all questions of images 80 and 81
    assert [e.id for e in task.read(download, "minival").examples] == ["80000", "81000", "81001"]
    assert len(task.read(download, "validation").examples) == len(VAL)  # validation stays all of val2014
    with pytest.raises(ValueError, match=r"vqav2\.minival_images is 6, but val2014 has 5 images"):
        minival_image_ids(VAL_IMAGES, 6, 0)
    # the vocabulary from train + val leaves out the minival questions, which alone made "1" and "no" frequent
    settings = VQASettings(min_answer_count=2, vocabulary_splits="train+validation", minival_images=2, seed=0)
    assert answer_vocabulary(download, settings) == ("yes", "red")


# --- Normalization --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "normalized"), [
    ("Yes.", "yes"), ("  yes\n", "yes"), ("hi\tthere", "hi there"), ("(yes)", "yes"), ("yes!", "yes"),
    ("red,white", "red white"), ("red, white", "red white"), ("left/right", "left right"),
    ("left / right", "left right"), ("1,000", "1000"), ("1,000 dogs, 2 cats", "1000 dogs 2 cats"),
    ("3.5", "3.5"), ("3.5.", "3.5"), ("U.S.A.", "usa"), ("mr. smith", "mr smith"), ("50%", "50%"),
    ("two", "2"), ("none", "0"), ("zero", "0"), ("Ten dogs", "10 dogs"), ("twenty", "twenty"),
    ("the dog", "dog"), ("an apple", "apple"), ("A", ""), ("there", "there"),
    ("dont", "don't"), ("doesnt", "doesn't"), ("whats", "what's"), ("youre", "you're"), ("oclock", "o'clock"),
    ("Im", "im"),  # the table's capitalized keys never apply to lower-cased words
    ("it's", "it's"), ("somebody'd", "somebodyd"),
])
def test_normalize_answer(answer: str, normalized: str) -> None:
    assert normalize_answer(answer) == normalized


def test_punctuation_step_alone() -> None:
    assert strip_punctuation("red-white") == "red white"
    assert strip_punctuation("red - white") == "red  white"  # deleted where it touches a space
    assert strip_punctuation("x,y 1,2") == "xy 12"            # a comma between digits: every mark deleted
    assert strip_punctuation("Two.") == "Two"                 # not lower-cased (the 2016 answers' processing)
    assert strip_punctuation("a." * 40) == "a" * 32 + "a." * 8  # at most 32 periods, as the official count


def test_contractions_table() -> None:
    assert len(CONTRACTIONS) == 120
    assert {CONTRACTIONS[k] for k in ("dont", "doesnt", "whats", "youre", "cant", "wont", "yall'd've")} == {
        "don't", "doesn't", "what's", "you're", "can't", "won't", "y'all'd've"}
    assert all("\u2019" not in key + value for key, value in CONTRACTIONS.items())  # ASCII apostrophes


# --- Accuracy -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("matching", "accuracy"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy(matching: int, accuracy: float) -> None:
    # 3 of 10 say "2": the 7 others see 3 matches (1 each), the 3 see 2 (2/3 each): (7 + 3 · 2/3) / 10 = 0.9
    answers = ["2"] * matching + ["3"] * (10 - matching)
    for revision in ("2016", "2021"):
        assert question_accuracy("2", answers, revision) == pytest.approx(accuracy)


def test_leave_one_out_with_several_other_answers() -> None:
    # 2 say "cat", the others "dog" ×5, "lion" ×3: each of the 8 sees 2 matches, each "cat" sees 1
    answers = ["cat", "cat"] + ["dog"] * 5 + ["lion"] * 3
    assert question_accuracy("cat", answers) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)


def test_revisions_disagree() -> None:
    # ten identical answers: 2021 normalizes neither side, 2016 normalizes the prediction
    assert question_accuracy("Yes.", ["yes"] * 10, "2021") == 0.0
    assert question_accuracy("Yes.", ["yes"] * 10, "2016") == 1.0
    assert question_accuracy("yes", ["yes"] * 10, "2021") == 1.0
    # disagreeing answers: 2021 normalizes both; 2016 gives the answers the punctuation step only
    answers = ["Two"] * 6 + ["three"] * 4
    assert question_accuracy("2", answers, "2021") == 1.0
    assert question_accuracy("2", answers, "2016") == 0.0
    answers = ["the dog"] * 8 + ["dog"] * 2
    assert question_accuracy("dog", answers, "2021") == 1.0
    assert question_accuracy("dog", answers, "2016") == pytest.approx(0.6)  # only the two "dog" match
    # whitespace: 2021 cleans the answers before it compares them
    assert question_accuracy("yes", [" yes"] * 10, "2021") == 1.0
    assert question_accuracy("yes", [" yes"] * 10, "2016") == 0.0
    with pytest.raises(ValueError, match="revision must be one of"):
        question_accuracy("yes", ["yes"] * 10, "2017")


def test_accuracy_per_answer_and_question_type() -> None:
    annotations = [VQAAnnotation(tuple(item.answers), item.answer_type, item.question_type, "") for item in VAL]
    answers = ["2", "yes", "frisbee", "red", "yes", "1", "no"]
    results = vqa_accuracy(answers, annotations)
    assert results == pytest.approx({
        "accuracy": (0.9 + 1 + 0 + 1 + 0 + 1 + 1) / 7,
        "accuracy/answer_type/number": (0.9 + 1) / 2, "accuracy/answer_type/yes_no": 2 / 3,
        "accuracy/answer_type/other": 0.5,
        "accuracy/question_type/how_many": 0.95, "accuracy/question_type/is_this": 1.0,
        "accuracy/question_type/what_is_on_the": 0.0, "accuracy/question_type/what_color_is_the": 1.0,
        "accuracy/question_type/is_the_man": 0.0, "accuracy/question_type/is_it": 1.0})
    with pytest.raises(ValueError, match="6 answers for 7 annotated questions"):
        vqa_accuracy(answers[:6], annotations)


def test_evaluate_split_maps_scores_to_answers(download: Path) -> None:
    task = benchmark(download, min_answer_count=1)
    assert task.label_names == ("yes", "red", "1", "2", "frisbee", "no")
    validation = task.read(download, "validation")
    chosen = [3, 0, 4, 1, 0, 2, 5]  # "2", yes, frisbee, red, yes, "1", no
    scores = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    scores[np.arange(7), chosen] = 10.0
    results = task.evaluate_split(scores, validation)
    assert results["accuracy"] == pytest.approx(0.7) and results["accuracy/answer_type/number"] == pytest.approx(0.95)
    assert task.metric_info() == {"vqa_eval_revision": "2021"}
    old = VQAv2(VQASettings(min_answer_count=1, revision="2016"), task.label_names)
    assert old.metric_info() == {"vqa_eval_revision": "2016"}
    assert old.evaluate_split(scores, validation)["accuracy"] == pytest.approx(0.7)
    with pytest.raises(TypeError, match=r"evaluate_split\(predictions, split\)"):
        task.evaluate(scores, np.zeros(7))
    with pytest.raises(ValueError, match=r"answer scores \[N, 6\], got shape \[7, 5\]"):
        task.evaluate_split(scores[:, :5], validation)
    with pytest.raises(ValueError, match="6 rows of predictions for the 7 questions"):
        task.evaluate_split(scores[:6], validation)
    with pytest.raises(ValueError, match="NaN"):
        task.evaluate_split(np.full((7, 6), np.nan), validation)
    with pytest.raises(ValueError, match="split 'test' has no annotations"):
        task.evaluate_split(scores[:3], task.read(download, "test"))


# --- Submission and the writer --------------------------------------------------------------------------------------


def test_submission_round_trip(download: Path, tmp_path: Path) -> None:
    task = benchmark(download, min_answer_count=1)
    test = task.read(download, "test-dev")
    ids = [e.id for e in test.examples]
    scores = np.zeros((2, 6), dtype=np.float32)
    scores[0, 4], scores[1, 0] = 1.0, 1.0
    path = task.write_submission(tmp_path / "run", "test-dev", ids, scores)
    assert path == tmp_path / "run" / "vqa_OpenEnded_mscoco_test-dev2015_itnet_results.json"
    assert json.loads(path.read_text()) == [{"question_id": 1000, "answer": "frisbee"},
                                            {"question_id": 2000, "answer": "yes"}]
    assert read_results(path) == {1000: "frisbee", 2000: "yes"}
    assert task.write_submission(tmp_path, "test", [e.id for e in task.read(download, "test").examples],
                                 np.eye(3, 6)).name == "vqa_OpenEnded_mscoco_test2015_itnet_results.json"
    # a validation results file scores as evaluate_split does
    validation = task.read(download, "validation")
    scores = np.random.default_rng(1).normal(size=(7, 6))
    results = read_results(task.write_submission(tmp_path, "validation", [e.id for e in validation.examples],
                                                 scores))
    assert vqa_accuracy([results[int(e.id)] for e in validation.examples],
                        [e.annotation for e in validation.examples]) == task.evaluate_split(scores, validation)
    with pytest.raises(ValueError, match="2 rows of predictions for 3 question ids"):
        task.write_submission(tmp_path, "test", [*ids, "3000"], scores[:2])
    with pytest.raises(ValueError, match="question id 'q1' is not a number"):
        task.write_submission(tmp_path, "test", ["q1", "2000"], scores[:2])
    path.write_text(json.dumps([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}]))
    with pytest.raises(ValueError, match=r"\[1\]: question 1 is answered twice"):
        read_results(path)
    path.write_text(json.dumps([{"question_id": 1, "answer": 2}]))
    with pytest.raises(ValueError, match=r"\[0\] \(question 1\): 'answer' must be a string"):
        read_results(path)


def test_writer_checks_its_input(tmp_path: Path) -> None:
    image = {5: color(5)}
    with pytest.raises(ValueError, match="minival is drawn from validation"):
        write_vqa_layout(tmp_path, "minival", [q(5, "Why?", ["yes"] * 10)], image)
    with pytest.raises(ValueError, match="train question 0: needs 10 answers, got 9"):
        write_vqa_layout(tmp_path, "train", [q(5, "Why?", ["yes"] * 9)], image)
    with pytest.raises(ValueError, match="test question 0: test has no annotations"):
        write_vqa_layout(tmp_path, "test", [q(5, "Why?", ["yes"] * 10)], image)
    with pytest.raises(ValueError, match="train question 1: no image given for image id 6"):
        write_vqa_layout(tmp_path, "train", [q(5, "Why?", ["yes"] * 10), q(6, "How?", ["no"] * 10)], image)
    with pytest.raises(ValueError, match="question id 7 is used twice"):
        write_vqa_layout(tmp_path, "test", [VQAQuestion(5, "A?", question_id=7), VQAQuestion(5, "B?",
                                                                                             question_id=7)], image)
    path = write_vqa_layout(tmp_path, "test", [q(5, "Why?")], image)
    assert path.name == "v2_OpenEnded_mscoco_test2015_questions.json"
    with pytest.raises(FileExistsError, match="write each split once"):
        write_vqa_layout(tmp_path, "test", [q(5, "Why?")], image)
    write_vqa_layout(tmp_path, "test-dev", [q(5, "Why?")], image)  # shares test2015/ with test
    assert [e.id for e in VQAV2.read(tmp_path, "test-dev").examples] == ["5000"]
