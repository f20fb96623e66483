"""A small VQA v2 download in the real layout (question and annotation JSON, COCO-named JPEGs), written with
:func:`~itnet_scale.tasks.vqa.write_vqa_layout`; the answers are chosen so the vocabulary, the soft targets and the
accuracy can be worked out by hand (see the comments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from itnet_scale.tasks.vqa import VQAQuestion, write_vqa_layout


def color(seed: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    """A small RGB image that differs per seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def q(image_id: int, question: str, answers: list[str] | None = None, answer_type: str = "other",
      question_type: str = "none of the above") -> VQAQuestion:
    return VQAQuestion(image_id, question, tuple(answers) if answers is not None else None, answer_type,
                       question_type)


# Multiple-choice answers (normalized) and how many questions give them: yes 3, red 2; "2", no, frisbee, 1 once.
# With min_answer_count=2 the vocabulary is (yes, red): by count, not alphabetically.
TRAIN = [
    q(9, "What color is the bus?", ["red"] * 6 + ["Red."] * 3 + ["dark red"], "other", "what color is the"),
    q(9, "Is there a dog?", ["yes"] * 10, "yes/no", "is there a"),
    q(25, "How many cats are there?", ["two"] * 3 + ["2"] * 4 + ["3"] * 2 + ["three"], "number", "how many"),
    q(25, "Is it sunny?", ["no"] * 7 + ["yes"] * 3, "yes/no", "is it"),
    q(30, "What is the man holding?", ["frisbee"] * 4 + ["disc"] * 3 + ["plate"] * 3, "other", "what is the man"),
    q(30, "What color is the frisbee?", ["red"] * 5 + ["white"] * 5, "other", "what color is the"),
    q(30, "Are there clouds?", ["Yes"] * 10, "yes/no", "are there"),
    q(9, "How many buses?", ["one"] * 10, "number", "how many"),
    q(9, "Is the bus red?", ["yes"] * 9 + ["no"], "yes/no", "is the"),
]
TRAIN_IMAGES = (9, 25, 30)

VAL = [
    q(42, "How many dogs?", ["2"] * 3 + ["3"] * 7, "number", "how many"),          # "2" scores 0.9
    q(42, "Is this outside?", ["yes"] * 10, "yes/no", "is this"),
    q(73, "What is on the plate?", ["pizza"] * 7 + ["bread", "cake", "a pizza"], "other", "what is on the"),
    q(74, "What color is the car?", ["red"] * 10, "other", "what color is the"),
    q(80, "Is the man happy?", ["no"] * 10, "yes/no", "is the man"),
    q(81, "How many people?", ["1"] * 10, "number", "how many"),
    q(81, "Is it raining?", ["yes"] * 6 + ["no"] * 4, "yes/no", "is it"),
]
VAL_IMAGES = (42, 73, 74, 80, 81)

TEST_DEV = [q(1, "What animal is this?"), q(2, "Is it day?")]
TEST = [*TEST_DEV, q(3, "How many birds?")]
TEST_IMAGES = (1, 2, 3)


def write_vqa_root(root: Path) -> Path:
    """The whole fixture download at ``root``: train, validation, test-dev and test."""
    write_vqa_layout(root, "train", TRAIN, {i: color(i) for i in TRAIN_IMAGES})
    write_vqa_layout(root, "validation", VAL, {i: color(100 + i) for i in VAL_IMAGES})
    write_vqa_layout(root, "test-dev", TEST_DEV, {i: color(200 + i) for i in TEST_IMAGES[:2]})
    write_vqa_layout(root, "test", TEST, {i: color(200 + i) for i in TEST_IMAGES})
    return root
