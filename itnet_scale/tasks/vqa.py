"""VQA v2 (open-ended questions on COCO images) as a fine-tuning benchmark, registered as ``vqav2``: the reader of
the official files, the answer normalization and accuracy of the official evaluation (both of its revisions), the
answer vocabulary and soft targets, the results file the challenge server takes, and a writer of the layout.

**Layout.** ``root`` holds the unpacked question and annotation zips and the COCO image zips::

    v2_OpenEnded_mscoco_train2014_questions.json     {"questions": [{"question_id", "image_id", "question"}], ...}
    v2_mscoco_train2014_annotations.json             {"annotations": [{"question_id", "image_id",
                                                       "answers": [10 × {"answer", "answer_confidence",
                                                       "answer_id"}], "multiple_choice_answer", "answer_type",
                                                       "question_type"}], ...}
    v2_OpenEnded_mscoco_val2014_questions.json       v2_mscoco_val2014_annotations.json
    v2_OpenEnded_mscoco_test-dev2015_questions.json  v2_OpenEnded_mscoco_test2015_questions.json  (no annotations)
    train2014/COCO_train2014_000000000009.jpg        COCO_<image folder>_<image id, 12 digits>.jpg
    val2014/COCO_val2014_000000000042.jpg
    test2015/COCO_test2015_000000000001.jpg          the images of both test-dev2015 and test2015

- Where files are looked for, first found wins: a question file in ``root`` then ``root/Questions``; an annotation
  file in ``root`` then ``root/Annotations``; an image folder in ``root``, ``root/Images`` then
  ``root/Images/mscoco`` (the folders of the official API's checkout). A missing file or folder raises
  ``FileNotFoundError`` naming it and the places looked in.
- Splits: ``train`` (train2014), ``validation`` (all of val2014), ``minival`` (see below), ``test-dev``
  (test-dev2015) and ``test`` (test2015, the test-standard questions); the test splits have no annotations, their
  labels are None.
- ``Example.id`` is the question id (``"458752000"``), ``Example.inputs`` ``{"image": Path, "text": question}``,
  ``Example.annotation`` a :class:`VQAAnnotation` (the ten raw answers, answer type, question type, the
  multiple-choice answer).
- Errors name the file and the question: a question without an annotation, an annotation of a question the
  question file does not list, two entries of one question id, image ids that disagree, an annotation without
  exactly ten answers, an entry missing a field. A question whose image file is missing is an error too (naming the
  image, the question and how many images are missing), not a skip: a partial image download would otherwise
  train on a subset and submit answers to a subset, silently.

**Answer normalization** (:func:`normalize_answer`, as the official evaluation processes answers): newlines and
tabs become spaces and the ends are stripped; then punctuation — each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` ,
? !`` is deleted where it touches a space or where the text holds a comma between two digits (``1,000`` → ``1000``),
and otherwise replaced by a space (``red,white`` → ``red white``); a period not followed by a digit is deleted
(``3.5`` keeps its point; at most 32 of them, as the official code passes ``re.UNICODE``, 32, as the count);
then words — lower-cased, split on whitespace, number words ``none``, ``zero``, ``one`` … ``ten`` become digits,
the articles ``a``, ``an``, ``the`` dropped, and contractions written without their apostrophe restored from the
official table (:data:`CONTRACTIONS`: ``dont`` → ``don't``, ``whats`` → ``what's``).

**Answer vocabulary** (:func:`answer_vocabulary`, the benchmark's ``label_names`` through :meth:`VQAv2.for_root`):
each question's normalized ``multiple_choice_answer`` is counted once; the answers of at least
``min_answer_count`` questions are kept, ordered by count (most first), then by the string. Counted over the
``train`` annotations, or over train and val2014 without the minival images (``vocabulary_splits:
"train+validation"``; with ``min_answer_count`` 9 this is the common 3129-answer vocabulary). The vocabulary
needs the train annotations even to evaluate a fine-tuned model: without them :meth:`VQAv2.for_root` raises
naming the file.

**Soft targets.** ``Example.label`` is ``((answer index, score), ...)`` in index order over the vocabulary's
answers among the ten normalized annotator answers, the score by how many annotators gave it: 1, 2, 3, ≥ 4 →
0.3, 0.6, 0.9, 1.0 (:data:`SOFT_SCORES`). In ``train`` a question none of whose answers is in the vocabulary is
dropped and counted in ``Split.skipped`` (``no answer in the vocabulary``); the evaluation splits keep every
question (label ``()``): their accuracy is scored on the raw answers, not on the vocabulary.

**Minival.** ``minival_images`` > 0 draws that many val2014 images (seeded by ``seed``, from the sorted image ids)
whose questions form the split ``minival``, which is then the split evaluated each epoch (:attr:`eval_splits`);
``validation`` stays all of val2014, and ``train`` stays train2014.

**Accuracy** (:func:`question_accuracy`, :func:`vqa_accuracy`, :meth:`VQAv2.evaluate_split`). A question's
accuracy is the mean over its ten annotators of ``min(1, matches among the other nine / 3)``: with 3 of 10 saying
"2", the prediction "2" scores (7 × 1 + 3 × 2/3) / 10 = 0.9. Which answers are normalized differs by revision of
the official script (``revision``):

- ``"2021"`` (the current script): both sides have their whitespace cleaned; if the ten cleaned answers are all the
  same string, nothing else is done on either side ("Yes." scores 0 against ten "yes"); otherwise both the
  answers and the prediction are normalized as above.
- ``"2016"`` (the earlier script, which many codebases copy): the prediction is always normalized; the answers
  are compared raw if all ten are the same string, else with the punctuation step only (not lower-cased, number
  words and articles kept), so "Yes." scores 1 against ten "yes", and "two" scores 0 against answers "Two"/"2".

Results are fractions in [0, 1] at full precision (the official script reports percentages rounded to two
places): ``accuracy`` (primary; the mean over questions), ``accuracy/answer_type/<type>`` (``yes_no``, ``number``,
``other``) and ``accuracy/question_type/<type>`` (``what_color_is_the``, ...): the mean over those questions, the
type's name lower-cased with every run of other characters than letters and digits made ``_``.
:meth:`VQAv2.metric_info` names the revision (``{"vqa_eval_revision": "2021"}``) for the run's metrics file.
:meth:`VQAv2.evaluate` (labels only) raises: the metric needs the annotators' answers.

**Submission** (:meth:`VQAv2.write_submission`): ``vqa_OpenEnded_mscoco_<subset>_itnet_results.json`` (subset
``test-dev2015``, ``test2015``, ``val2014``, ``minival2014`` or ``train2014``), the JSON list
``[{"question_id": int, "answer": str}, ...]`` the evaluation server takes; :func:`read_results` reads one back.

:func:`write_vqa_layout` writes :class:`VQAQuestion` s and images as one split of this layout.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from itnet_scale.checkpoint.atomic_writes import write_text_atomically
from itnet_scale.tasks.benchmark import Benchmark, Example, Split, register_benchmark
from itnet_scale.tasks.metrics import predicted_classes

#: Benchmark split → the subset its files are named by.
FILE_SPLITS = {"train": "train2014", "validation": "val2014", "minival": "val2014", "test-dev": "test-dev2015",
               "test": "test2015"}
SPLITS = tuple(FILE_SPLITS)
#: Subset → the folder (and file-name prefix) of its images.
IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test-dev2015": "test2015", "test2015": "test2015"}
#: The subsets with annotation files.
ANNOTATED = ("train2014", "val2014")
#: Benchmark split → the subset its results file is named by.
SUBMISSION_SUBSETS = {"train": "train2014", "validation": "val2014", "minival": "minival2014",
                      "test-dev": "test-dev2015", "test": "test2015"}
#: Folders below the root searched for question files, annotation files and image folders (after the root).
QUESTION_FOLDERS = ("Questions",)
ANNOTATION_FOLDERS = ("Annotations",)
IMAGE_PARENTS = ("Images", "Images/mscoco")
ANSWERS_PER_QUESTION = 10
#: Soft-target score by the number of annotators who gave the answer (0, 1, 2, 3, 4 or more).
SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)
REVISIONS = ("2016", "2021")
VOCABULARY_SPLITS = ("train", "train+validation")


def questions_file(subset: str) -> str:
    """``v2_OpenEnded_mscoco_<subset>_questions.json``."""
    return f"v2_OpenEnded_mscoco_{subset}_questions.json"


def annotations_file(subset: str) -> str:
    """``v2_mscoco_<subset>_annotations.json``."""
    return f"v2_mscoco_{subset}_annotations.json"


def image_file(folder: str, image_id: int) -> str:
    """COCO's image name: ``COCO_train2014_000000000009.jpg`` for folder ``train2014`` and image 9."""
    return f"COCO_{folder}_{image_id:012d}.jpg"


def results_file(split: str) -> str:
    """The results file of ``split``: ``vqa_OpenEnded_mscoco_test-dev2015_itnet_results.json``."""
    if split not in SUBMISSION_SUBSETS:
        raise ValueError(f"unknown VQA v2 split {split!r}; expected one of {list(SUBMISSION_SUBSETS)}")
    return f"vqa_OpenEnded_mscoco_{SUBMISSION_SUBSETS[split]}_itnet_results.json"


@dataclass(frozen=True)
class VQASettings:
    """How the answers become classes and how VQA is scored (see the module doc).

    ``min_answer_count``: the questions an answer must be the multiple-choice answer of to be a class;
    ``vocabulary_splits``: ``"train"`` or ``"train+validation"`` (val2014 without the minival images), counted for
    the vocabulary; ``minival_images``: val2014 images whose questions form the ``minival`` split (0: none);
    ``seed``: their draw; ``revision``: the official evaluation's, ``"2016"`` or ``"2021"``."""

    min_answer_count: int = 9
    vocabulary_splits: str = "train"
    minival_images: int = 0
    seed: int = 0
    revision: str = "2021"

    def __post_init__(self) -> None:
        if isinstance(self.revision, int) and not isinstance(self.revision, bool):
            object.__setattr__(self, "revision", str(self.revision))  # YAML reads an unquoted 2021 as a number
        for key, least in (("min_answer_count", 1), ("minival_images", 0), ("seed", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"vqav2.{key} must be an integer >= {least}, got {value!r}")
        if self.vocabulary_splits not in VOCABULARY_SPLITS:
            raise ValueError(f"vqav2.vocabulary_splits must be one of {VOCABULARY_SPLITS}, got "
                             f"{self.vocabulary_splits!r}")
        if self.revision not in REVISIONS:
            raise ValueError(f"vqav2.revision must be one of {REVISIONS} (the official evaluation script's), got "
                             f"{self.revision!r}")


@dataclass(frozen=True)
class VQAAnnotation:
    """What VQA's accuracy reads of a question: the ten annotators' raw answers (file order), the answer type
    (``yes/no``, ``number``, ``other``), the question type (``what color is the``) and the multiple-choice answer
    (the most common one)."""

    answers: tuple[str, ...]
    answer_type: str
    question_type: str
    multiple_choice_answer: str


# --- Answer normalization -----------------------------------------------------------------------------------------

#: The marks the punctuation step deletes or replaces by a space (not ``'``, ``:``, ``.``; ``.`` has its own rule).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
#: The official evaluation's contractions table, as it is: it maps lower-cased words, so its capitalized keys
#: (``Im``) never apply, and ``somebody'd`` maps to ``somebodyd``.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
# The official pattern "(?!<=\d)(\.)(?!\d)" means to look behind but is a look-ahead for "<=" and a digit, which
# never follows where a period stands: what it does is match a period not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
#: The official script passes ``re.UNICODE`` (32) where ``re.sub`` takes the count: at most 32 periods go.
PERIODS_DELETED = 32


def clean_whitespace(text: str) -> str:
    """Newlines and tabs as spaces, the ends stripped (what the official script does to every answer first)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 18)  # the 2016 revision's answers take this step alone
def strip_punctuation(text: str) -> str:
    """The official punctuation step (see the module doc): each mark deleted where it touches a space or where the
    text holds a comma between digits, else replaced by a space; periods not followed by a digit deleted."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text  # looked for in the text as given, not as edited
        result = result.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result, count=PERIODS_DELETED)


def standardize_words(text: str) -> str:
    """The official word step: lower-cased words, number words as digits, articles dropped, contractions given
    their apostrophe, joined by single spaces."""
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


@functools.lru_cache(maxsize=1 << 18)  # answers repeat: VQA v2's 6.6M answers hold a few hundred thousand strings
def normalize_answer(answer: str) -> str:
    """An answer as the official evaluation compares it: whitespace, punctuation and word steps (module doc)."""
    return standardize_words(strip_punctuation(clean_whitespace(answer)))


def soft_score(annotators: int) -> float:
    """The soft target of an answer given by ``annotators`` of the ten: 0, 0.3, 0.6, 0.9, then 1."""
    return SOFT_SCORES[min(annotators, len(SOFT_SCORES) - 1)]


def soft_targets(answers: Sequence[str], index: Mapping[str, int]) -> tuple[tuple[int, float], ...]:
    """``((answer index, score), ...)`` in index order for the vocabulary's (``index``: normalized answer → class)
    answers among the normalized ``answers``."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    return tuple(sorted((index[answer], soft_score(n)) for answer, n in counts.items() if answer in index))


# --- Accuracy -----------------------------------------------------------------------------------------------------


def _check_revision(revision: str) -> None:
    if revision not in REVISIONS:
        raise ValueError(f"the VQA evaluation revision must be one of {REVISIONS}, got {revision!r}")


def question_accuracy(prediction: str, answers: Sequence[str], revision: str = "2021") -> float:
    """One question's accuracy: the mean over its annotators of ``min(1, matches among the others / 3)``, the
    answers and ``prediction`` compared as the official script of ``revision`` does (module doc)."""
    _check_revision(revision)
    if not answers:
        raise ValueError("a question's accuracy needs its annotators' answers, got none")
    if revision == "2021":
        truths = [clean_whitespace(answer) for answer in answers]
        predicted = clean_whitespace(prediction)
        if len(set(truths)) > 1:
            truths = [normalize_answer(answer) for answer in truths]
            predicted = normalize_answer(predicted)
    else:
        truths = list(answers)
        if len(set(truths)) > 1:
            truths = [strip_punctuation(answer) for answer in truths]
        predicted = normalize_answer(prediction)
    matches = sum(truth == predicted for truth in truths)
    # leave one out: the others matching are all matches but this annotator's own
    return sum(min(1.0, (matches - (truth == predicted)) / 3) for truth in truths) / len(truths)


def metric_key_part(name: str) -> str:
    """A type's name as part of a metric key: lower-cased, each run of other characters than letters and digits
    made ``_`` (``yes/no`` → ``yes_no``, ``what color is the`` → ``what_color_is_the``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "_"


def vqa_accuracy(predictions: Sequence[str], annotations: Sequence[VQAAnnotation],
                 revision: str = "2021") -> dict[str, float]:
    """The official accuracy of answer strings ``predictions`` against ``annotations`` (one per question, same
    order): ``accuracy`` and per answer type and per question type (module doc), fractions in [0, 1]."""
    _check_revision(revision)
    if len(predictions) != len(annotations) or not annotations:
        raise ValueError(f"{len(predictions)} answers for {len(annotations)} annotated questions (need >= 1 each)")
    groups: dict[str, list[float]] = defaultdict(list)
    named: dict[str, str] = {}
    scores = []
    for prediction, annotation in zip(predictions, annotations):
        if not isinstance(prediction, str):
            raise ValueError(f"answers must be strings, got {type(prediction).__name__} ({prediction!r})")
        score = question_accuracy(prediction, annotation.answers, revision)
        scores.append(score)
        for kind, name in (("answer_type", annotation.answer_type), ("question_type", annotation.question_type)):
            key = f"accuracy/{kind}/{metric_key_part(name)}"
            if named.setdefault(key, name) != name:
                raise ValueError(f"{kind}s {named[key]!r} and {name!r} both make the metric name {key!r}")
            groups[key].append(score)
    results = {"accuracy": float(np.mean(scores))}
    results.update((key, float(np.mean(values))) for key, values in sorted(groups.items()))
    return results


# --- Reading the files --------------------------------------------------------------------------------------------


def _first_found(root: Path, name: str, folders: Sequence[str], what: str, is_dir: bool = False) -> Path:
    places = [root, *(root / folder for folder in folders)]
    for place in places:
        if (place / name).is_dir() if is_dir else (place / name).is_file():
            return place / name
    raise FileNotFoundError(f"{root / name}: no such {what} (looked in {', '.join(str(p) for p in places)})")


def find_questions(root: str | Path, subset: str) -> Path:
    """The question file of ``subset`` (``train2014``, ...) under ``root`` or ``root/Questions``."""
    return _first_found(Path(root), questions_file(subset), QUESTION_FOLDERS, "VQA question file")


def find_annotations(root: str | Path, subset: str) -> Path:
    """The annotation file of ``subset`` under ``root`` or ``root/Annotations``."""
    return _first_found(Path(root), annotations_file(subset), ANNOTATION_FOLDERS, "VQA annotation file")


def find_images(root: str | Path, subset: str) -> Path:
    """The image folder of ``subset`` (``test2015/`` for ``test-dev2015``) under ``root``, ``root/Images`` or
    ``root/Images/mscoco``."""
    return _first_found(Path(root), IMAGE_FOLDERS[subset], IMAGE_PARENTS, "COCO image folder", is_dir=True)


def _json_list(path: Path, key: str) -> list:
    """The ``key`` list of the JSON object in ``path``; a file that is not one raises naming it."""
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
    return data[key]


def _field(entry: object, name: str, kind: type, where: str) -> object:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: {name!r} must be {'an integer' if kind is int else 'a string'}, got {value!r}")
    return value


@dataclass(frozen=True)
class VQAQuestionRecord:
    """A question as its file lists it."""

    question_id: int
    image_id: int
    question: str


def read_questions(path: str | Path) -> list[VQAQuestionRecord]:
    """The questions of a question file, in file order; a malformed entry or a question id listed twice raises
    naming the file and the entry."""
    path = Path(path)
    records, seen = [], set()
    for number, entry in enumerate(_json_list(path, "questions")):
        where = f"{path}: questions[{number}]"
        question_id = _field(entry, "question_id", int, where)
        record = VQAQuestionRecord(question_id, _field(entry, "image_id", int, f"{where} (question {question_id})"),
                                   _field(entry, "question", str, f"{where} (question {question_id})"))
        if question_id in seen:
            raise ValueError(f"{where}: question {question_id} is listed twice")
        seen.add(question_id)
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no questions")
    return records


def read_annotations(path: str | Path) -> dict[int, tuple[int, VQAAnnotation]]:
    """Question id → ``(image id, annotation)`` of an annotation file; an entry without exactly ten answers, a
    missing field or a question id given twice raises naming the file and the question."""
    path = Path(path)
    annotations: dict[int, tuple[int, VQAAnnotation]] = {}
    for number, entry in enumerate(_json_list(path, "annotations")):
        question_id = _field(entry, "question_id", int, f"{path}: annotations[{number}]")
        where = f"{path}: question {question_id}"
        image_id = _field(entry, "image_id", int, where)
        answers = entry.get("answers")
        if not isinstance(answers, list) or len(answers) != ANSWERS_PER_QUESTION:
            got = f"{len(answers)}" if isinstance(answers, list) else repr(answers)
            raise ValueError(f"{where}: expected {ANSWERS_PER_QUESTION} answers, got {got}")
        raw = tuple(_field(answer, "answer", str, f"{where}, answers[{i}]") for i, answer in enumerate(answers))
        annotation = VQAAnnotation(raw, _field(entry, "answer_type", str, where),
                                   _field(entry, "question_type", str, where),
                                   _field(entry, "multiple_choice_answer", str, where))
        if question_id in annotations:
            raise ValueError(f"{where}: annotated twice")
        annotations[question_id] = (image_id, annotation)
    if not annotations:
        raise ValueError(f"{path}: no annotations")
    return annotations


def _annotated_questions(root: Path, subset: str) -> list[tuple[VQAQuestionRecord, VQAAnnotation]]:
    """The questions of an annotated subset with their annotations, in question-file order; the two files must
    hold the same questions of the same images."""
    questions_path, annotations_path = find_questions(root, subset), find_annotations(root, subset)
    questions, annotations = read_questions(questions_path), read_annotations(annotations_path)
    pairs = []
    for record in questions:
        if record.question_id not in annotations:
            raise ValueError(f"{annotations_path}: no annotation for question {record.question_id} (listed in "
                             f"{questions_path})")
        image_id, annotation = annotations.pop(record.question_id)
        if image_id != record.image_id:
            raise ValueError(f"{annotations_path}: question {record.question_id} is of image {image_id}, but "
                             f"{questions_path} says image {record.image_id}")
        pairs.append((record, annotation))
    if annotations:
        extra = next(iter(annotations))
        raise ValueError(f"{annotations_path}: annotates question {extra}, which {questions_path} does not list "
                         f"({len(annotations)} such annotations)")
    return pairs


def minival_image_ids(image_ids: Iterable[int], count: int, seed: int) -> frozenset[int]:
    """``count`` of the distinct ``image_ids``, drawn without replacement by a generator seeded with ``seed`` from
    the sorted ids (so the draw depends on the ids, not on file order)."""
    unique = np.array(sorted(set(image_ids)), dtype=np.int64)
    if count > len(unique):
        raise ValueError(f"vqav2.minival_images is {count}, but val2014 has {len(unique)} images")
    return frozenset(int(i) for i in np.random.default_rng(seed).choice(unique, size=count, replace=False))


def _validation_questions(root: Path, settings: VQASettings,
                          part: str) -> list[tuple[VQAQuestionRecord, VQAAnnotation]]:
    """val2014's questions: all (``part="validation"``), those of the minival images (``"minival"``) or the others
    (``"rest"``)."""
    pairs = _annotated_questions(root, "val2014")
    if part == "validation" or not settings.minival_images:
        return pairs
    held_out = minival_image_ids((record.image_id for record, _ in pairs), settings.minival_images, settings.seed)
    keep = part == "minival"
    return [(record, annotation) for record, annotation in pairs if (record.image_id in held_out) == keep]


def answer_vocabulary(root: str | Path, settings: VQASettings | None = None) -> tuple[str, ...]:
    """The answer classes (module doc): the normalized multiple-choice answers of at least ``min_answer_count``
    questions of ``vocabulary_splits``, most frequent first, ties by the string."""
    settings = settings if settings is not None else VQASettings()
    root = Path(root)
    pairs = _annotated_questions(root, "train2014")
    if settings.vocabulary_splits == "train+validation":
        pairs += _validation_questions(root, settings, "rest")
    counts = Counter(normalize_answer(annotation.multiple_choice_answer) for _, annotation in pairs)
    kept = sorted((answer for answer, n in counts.items() if n >= settings.min_answer_count),
                  key=lambda answer: (-counts[answer], answer))
    if not kept:
        raise ValueError(f"{find_annotations(root, 'train2014')}: no answer is the multiple-choice answer of "
                         f"vqav2.min_answer_count={settings.min_answer_count} questions or more")
    return tuple(kept)


def _image_paths(root: Path, subset: str, records: Sequence[VQAQuestionRecord]) -> list[Path]:
    """Each question's image path; a missing image raises naming it, its question and how many are missing."""
    folder = find_images(root, subset)
    with os.scandir(folder) as scan:  # one listing, not a stat per question
        present = {entry.name for entry in scan}
    prefix = IMAGE_FOLDERS[subset]
    names = [image_file(prefix, record.image_id) for record in records]
    missing = [(name, record) for name, record in zip(names, records) if name not in present]
    if missing:
        name, record = missing[0]
        count = len({name for name, _ in missing})
        raise FileNotFoundError(f"{folder / name}: no such image (of question {record.question_id}; {count} of the "
                                f"{len(set(names))} images of {subset} are missing)")
    return [folder / name for name in names]


# --- The benchmark ------------------------------------------------------------------------------------------------


class VQAv2(Benchmark):
    """VQA v2 open-ended (module doc). The registered instance knows no answers (they come from the files);
    :meth:`for_root` gives one whose ``label_names`` are the answer vocabulary."""

    name = "vqav2"
    modality = "image_text"
    primary_metric = "accuracy"
    train_split = "train"
    test_splits = ("test-dev", "test")

    def __init__(self, settings: VQASettings | None = None, answers: Sequence[str] | None = None) -> None:
        self.settings = settings if settings is not None else VQASettings()
        self._answers = tuple(answers) if answers is not None else None
        if self._answers is not None and len(set(self._answers)) != len(self._answers):
            raise ValueError("the answer vocabulary lists an answer twice")
        self.eval_splits = ("minival",) if self.settings.minival_images else ("validation",)

    @property
    def label_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The answer vocabulary in class-index order; only a benchmark from :meth:`for_root` knows it."""
        if self._answers is None:
            raise ValueError("vqav2's classes are the answers of its training annotations: use "
                             "get_benchmark('vqav2').for_root(root)")
        return self._answers

    @property
    def regression(self) -> bool:
        return False

    @property
    def model_task(self) -> str:
        return "vqa"  # ITNetForVQA: soft-score targets, binary cross-entropy per answer

    def for_root(self, root: Path) -> VQAv2:
        return VQAv2(self.settings, answer_vocabulary(root, self.settings))

    def metric_info(self) -> dict[str, str]:
        """The official evaluation's revision the metrics follow."""
        return {"vqa_eval_revision": self.settings.revision}

    def read(self, root: Path, split: str) -> Split:
        """Split ``train``, ``validation``, ``minival``, ``test-dev`` or ``test`` (module doc)."""
        if split not in FILE_SPLITS:
            raise ValueError(f"unknown VQA v2 split {split!r}; expected one of {list(FILE_SPLITS)}")
        if split == "minival" and not self.settings.minival_images:
            raise ValueError("split 'minival' needs vqav2.minival_images > 0 (the val2014 images it holds)")
        root, subset = Path(root), FILE_SPLITS[split]
        if subset not in ANNOTATED:
            records = read_questions(find_questions(root, subset))
            paths = _image_paths(root, subset, records)
            return Split(split, [Example(str(record.question_id), {"image": path, "text": record.question})
                                 for record, path in zip(records, paths)])
        pairs = (_annotated_questions(root, subset) if split == "train" else
                 _validation_questions(root, self.settings, split))
        answers = self._answers if self._answers is not None else answer_vocabulary(root, self.settings)
        index = {answer: number for number, answer in enumerate(answers)}
        examples, skipped = [], Counter()
        paths = _image_paths(root, subset, [record for record, _ in pairs])
        for (record, annotation), path in zip(pairs, paths):
            label = soft_targets(annotation.answers, index)
            if not label and split == "train":
                skipped["no answer in the vocabulary"] += 1
                continue
            examples.append(Example(str(record.question_id), {"image": path, "text": record.question}, label,
                                    annotation))
        return Split(split, examples, dict(skipped))

    def evaluate(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        raise TypeError("vqav2's accuracy reads the ten annotators' answers, which labels do not hold: use "
                        "evaluate_split(predictions, split)")

    def predicted_answers(self, predictions: np.ndarray) -> list[str]:
        """The answer strings of class scores ``[N, A]`` (A: the vocabulary's size): each row's highest."""
        scores = np.asarray(predictions)
        answers = self.label_names
        if scores.ndim != 2 or scores.shape[1] != len(answers) or scores.dtype.kind not in "fiu":
            raise ValueError(f"vqav2: predictions must be answer scores [N, {len(answers)}], got shape "
                             f"{list(scores.shape)} of dtype {scores.dtype}")
        if scores.dtype.kind == "f" and not np.isfinite(scores).all():
            raise ValueError("vqav2: predictions hold NaN or infinity")
        return [answers[c] for c in predicted_classes(scores)]

    def evaluate_split(self, predictions: np.ndarray, split: Split) -> dict[str, float]:
        """The official accuracy (module doc) of answer scores ``[N, A]``, one row per question of ``split``."""
        annotations = [example.annotation for example in split.examples]
        if not annotations or any(annotation is None for annotation in annotations):
            raise ValueError(f"split {split.name!r} has no annotations (a test split?): its accuracy is the "
                             "evaluation server's")
        answers = self.predicted_answers(predictions)
        if len(answers) != len(annotations):
            raise ValueError(f"vqav2: {len(answers)} rows of predictions for the {len(annotations)} questions of "
                             f"split {split.name!r}")
        return vqa_accuracy(answers, annotations, self.settings.revision)

    def write_submission(self, folder: Path, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
        """Write ``folder/vqa_OpenEnded_mscoco_<subset>_itnet_results.json`` (module doc) from answer scores
        ``[N, A]`` of the questions ``ids``; returns its path."""
        name = results_file(split)
        answers = self.predicted_answers(predictions)
        if len(answers) != len(ids) or not ids:
            raise ValueError(f"vqav2: {len(answers)} rows of predictions for {len(ids)} question ids")
        results = []
        for question_id, answer in zip(ids, answers):
            if not str(question_id).isdigit():
                raise ValueError(f"vqav2: question id {question_id!r} is not a number")
            results.append({"question_id": int(question_id), "answer": answer})
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(results))
        return path


VQAV2 = register_benchmark(VQAv2())


def read_results(path: str | Path) -> dict[int, str]:
    """A results file (``[{"question_id": int, "answer": str}, ...]``) as question id → answer; an entry of another
    shape or a question answered twice raises naming the file and the entry."""
    path = Path(path)
    try:
        entries = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{'question_id', 'answer'}} objects")
    results: dict[int, str] = {}
    for number, entry in enumerate(entries):
        where = f"{path}: [{number}]"
        question_id = _field(entry, "question_id", int, where)
        answer = _field(entry, "answer", str, f"{where} (question {question_id})")
        if question_id in results:
            raise ValueError(f"{where}: question {question_id} is answered twice")
        results[question_id] = answer
    return results


# --- Writing the layout -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQAQuestion:
    """A question to write with :func:`write_vqa_layout`: its image, its text and — in the annotated subsets — its
    ten answers (None in the test subsets). ``question_id`` defaults to COCO's scheme, ``image_id · 1000 + k`` for
    the image's k-th question (from 0); ``multiple_choice_answer`` to the most common answer (the first of equal
    counts)."""

    image_id: int
    question: str
    answers: Sequence[str] | None = None
    answer_type: str = "other"
    question_type: str = "none of the above"
    question_id: int | None = None
    multiple_choice_answer: str | None = None


def write_vqa_layout(root: str | Path, split: str, questions: Sequence[VQAQuestion],
                     images: Mapping[int, Image.Image]) -> Path:
    """Write one subset as the real files at ``root``: ``split`` ``train``, ``validation``, ``test-dev`` or
    ``test``; its question file (and annotation file) in ``root`` and each of ``images`` (image id → PIL image)
    as ``<image folder>/COCO_<image folder>_<12-digit id>.jpg`` (JPEG, RGB). Every question's image must be
    given; a subset's files must not exist yet (images may: test-dev and test share ``test2015/``). Returns the
    question file's path."""
    if split not in FILE_SPLITS or split == "minival":
        raise ValueError(f"write_vqa_layout writes a split of {[s for s in FILE_SPLITS if s != 'minival']}, got "
                         f"{split!r} (minival is drawn from validation)")
    root, subset = Path(root), FILE_SPLITS[split]
    annotated = subset in ANNOTATED
    if not questions:
        raise ValueError(f"{split}: no questions")
    per_image: Counter[int] = Counter()
    question_entries, annotation_entries, seen = [], [], set()
    for number, item in enumerate(questions):
        where = f"{split} question {number}"
        if item.image_id not in images:
            raise ValueError(f"{where}: no image given for image id {item.image_id}")
        question_id = item.question_id
        if question_id is None:
            question_id = item.image_id * 1000 + per_image[item.image_id]
        per_image[item.image_id] += 1
        if question_id in seen:
            raise ValueError(f"{where}: question id {question_id} is used twice")
        seen.add(question_id)
        question_entries.append({"image_id": item.image_id, "question": item.question, "question_id": question_id})
        if not annotated:
            if item.answers is not None:
                raise ValueError(f"{where}: {split} has no annotations; give no answers")
            continue
        if item.answers is None or len(item.answers) != ANSWERS_PER_QUESTION:
            raise ValueError(f"{where}: needs {ANSWERS_PER_QUESTION} answers, got "
                             f"{None if item.answers is None else len(item.answers)}")
        common = item.multiple_choice_answer or Counter(item.answers).most_common(1)[0][0]
        annotation_entries.append({
            "question_type": item.question_type, "multiple_choice_answer": common,
            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i}
                        for i, answer in enumerate(item.answers, start=1)],
            "image_id": item.image_id, "answer_type": item.answer_type, "question_id": question_id})
    paths = [root / questions_file(subset), *([root / annotations_file(subset)] if annotated else [])]
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path}: exists; write each split once")
    folder = root / IMAGE_FOLDERS[subset]
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in sorted(set(per_image)):
        image = images[image_id]
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {image_id}: expected a PIL image, got {type(image).__name__}")
        image.convert("RGB").save(folder / image_file(IMAGE_FOLDERS[subset], image_id), format="JPEG", quality=95)
    header = {"info": {"description": "VQA v2 layout"}, "license": {}, "data_type": "mscoco", "data_subtype": subset}
    write_text_atomically(paths[0], json.dumps({**header, "task_type": "Open-Ended", "questions": question_entries}))
    if annotated:
        write_text_atomically(paths[1], json.dumps({**header, "annotations": annotation_entries}))
    return paths[0]


__all__ = ["ANSWERS_PER_QUESTION", "ARTICLES", "CONTRACTIONS", "FILE_SPLITS", "IMAGE_FOLDERS", "NUMBER_WORDS",
           "PUNCTUATION", "REVISIONS", "SOFT_SCORES", "SPLITS", "SUBMISSION_SUBSETS", "VQAV2", "VQAAnnotation",
           "VQAQuestion", "VQAQuestionRecord", "VQASettings", "VQAv2", "annotations_file", "answer_vocabulary",
           "clean_whitespace", "find_annotations", "find_images", "find_questions", "image_file",
           "metric_key_part", "minival_image_ids", "normalize_answer", "question_accuracy", "questions_file",
           "read_annotations", "read_questions", "read_results", "results_file", "soft_score", "soft_targets",
           "standardize_words", "strip_punctuation", "vqa_accuracy", "write_vqa_layout"]
