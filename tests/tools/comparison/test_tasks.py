"""The comparison's task generators: labels checked by brute force, the Burgers solver against Cole–Hopf, the
super-resolution grids, and unknown or missing tasks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from comparison.burgers import cole_hopf, random_initial_conditions, solve_burgers
from comparison.tasks import (
    COPY_BLANK,
    COPY_MARKER,
    GLYPHS,
    IGNORE,
    QUICK_SIZES,
    RECALL_QUERY,
    TaskError,
    build_task,
    copy_sequences,
    locality_images,
    novel_sentences,
    parity_sequences,
    recall_sequences,
    subsample,
)


def test_parity_targets_are_prefix_parities():
    ids, parity = parity_sequences(50, np.random.default_rng(1), length=20)
    for row, target in zip(ids, parity):
        bits = [int(token) - 1 for token in row]
        assert set(bits) <= {0, 1}
        assert [sum(bits[: t + 1]) % 2 for t in range(len(bits))] == target.tolist()


def test_recall_label_is_the_value_after_the_queried_key():
    ids, labels = recall_sequences(50, np.random.default_rng(2), pairs=10)
    for row, label in zip(ids, labels):
        assert row[-2] == RECALL_QUERY
        keys, values = row[0:20:2].tolist(), row[1:20:2].tolist()
        assert len(set(keys)) == len(keys)  # keys are distinct, so the answer is unique
        assert values[keys.index(int(row[-1]))] - 2 - 32 == label


def test_copy_targets_are_the_data_symbols_in_order():
    ids, targets = copy_sequences(50, np.random.default_rng(3), span=20, tokens=5)
    for row, target in zip(ids, targets):
        data = [int(token) - 3 for token in row[:20] if token not in (COPY_BLANK, COPY_MARKER)]
        assert len(data) == 5 and (row[20:] == COPY_MARKER).all()
        assert target[20:].tolist() == data and (target[:20] == IGNORE).all()


def test_locality_images_hold_their_glyph():
    images, labels = locality_images(40, np.random.default_rng(4), noise=0.0)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    for image, label in zip(images[:, 0], labels):
        assert image.sum() == 3  # the glyph's ink only
        found = {g for g in range(len(GLYPHS)) for r in range(14) for c in range(14)
                 if (image[r:r + 3, c:c + 3] == GLYPHS[g]).all()}
        assert found == {label}


@pytest.mark.parametrize("offset", [1.5, 0.95])  # 0.95: φ nearly vanishes, a steep front
def test_burgers_solver_matches_cole_hopf(offset):
    viscosity, x = 0.1, 2 * math.pi * np.arange(256) / 256
    amplitudes, phases = np.array([0.5, 0.3, 0.1]), np.array([0.1, 1.0, 2.0])
    initial = cole_hopf(x, 0.0, viscosity, offset, amplitudes, phases)
    solved = solve_burgers(initial[None], viscosity, 1.0, dt=1e-3)[0]
    exact = cole_hopf(x, 1.0, viscosity, offset, amplitudes, phases)
    assert np.linalg.norm(solved - exact) / np.linalg.norm(exact) < 1e-6
    assert np.abs(solved - initial).max() > 0.01  # the solution moved: the check is not trivially met


def test_burgers_solver_rejects_a_step_past_cfl():
    initial = random_initial_conditions(2, 256, np.random.default_rng(0)) * 20
    with pytest.raises(ValueError, match="CFL"):
        solve_burgers(initial, 0.1, 0.1, dt=0.05)


def test_burgers_super_resolution_grids_sample_one_field(tmp_path):
    task = build_task("burgers", QUICK_SIZES, tmp_path)
    coarse = task.extra_tests["test_64_points"]
    assert task.train.inputs.shape[1] == 64 and task.test.inputs.shape[1] == 128
    assert torch.equal(task.test.inputs[:, ::2], coarse.inputs)  # the coarse grid is every other fine point
    assert torch.equal(task.test.targets[:, ::2], coarse.targets)
    with pytest.raises(ValueError, match="cannot take 48 points"):
        subsample(task.test.inputs, 48)


def test_novel_sentences_split_paragraphs_and_drop_headings():
    lines = ["CHAPTER I", "", "It is a truth universally acknowledged, that a single man in", "possession of a good",
             "fortune, must be in want of a wife. Yes! Short one.", "", "However little known the feelings or views of",
             "such a man may be."]
    assert novel_sentences(lines) == [
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife.", "However little known the feelings or views of such a man may be."]


def test_unknown_task_names_the_choices(tmp_path):
    with pytest.raises(TaskError, match=r"unknown task 'mnist'.*locality"):
        build_task("mnist", QUICK_SIZES, tmp_path)


@pytest.mark.parametrize(("task", "target"), [("fashion-mnist", "make fashion-mnist"),
                                              ("austen", "make janeaustenr")])
def test_missing_real_data_names_the_make_target(tmp_path: Path, task, target):
    with pytest.raises(TaskError, match=target):
        build_task(task, QUICK_SIZES, tmp_path)
