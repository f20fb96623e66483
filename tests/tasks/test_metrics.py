"""The official metrics against hand-computed cases and against scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from itnet_scale.tasks import metrics


def test_hand_computed_cases():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = np.array([1, 1, 2, 1])
    assert metrics.accuracy(scores, labels) == 0.5
    assert metrics.top_k_accuracy(scores, labels, 2) == 1.0        # the 2nd and 4th have class 1 second
    assert metrics.top_k_accuracy(scores, labels, 1) == 0.5
    assert metrics.mean_class_accuracy(scores, labels) == pytest.approx((1 / 3 + 1) / 2)
    # CoLA-style binary case: TP=2, TN=1, FP=1, FN=0 → (2·1 − 1·0) / √((2+1)(2+0)(1+1)(1+0))
    predicted, gold = np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])
    assert metrics.matthews_corrcoef(predicted, gold) == pytest.approx(2 / np.sqrt(12))
    assert metrics.binary_f1(predicted, gold) == pytest.approx(4 / 5)
    assert metrics.matthews_corrcoef(np.ones(4, int), gold) == 0.0  # one predicted class: defined as 0
    assert metrics.spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(
        0.9486832980505138)


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_match_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    n, classes = 97, 7
    scores = rng.normal(size=(n, classes))
    labels = rng.integers(0, classes, n)
    assert metrics.accuracy(scores, labels) == pytest.approx(sk.accuracy_score(labels, scores.argmax(-1)))
    for k in (1, 3, 5):
        assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(
            sk.top_k_accuracy_score(labels, scores, k=k, labels=range(classes)))
    assert metrics.mean_class_accuracy(scores, labels) == pytest.approx(
        sk.balanced_accuracy_score(labels, scores.argmax(-1)))
    assert metrics.matthews_corrcoef(scores, labels) == pytest.approx(sk.matthews_corrcoef(labels, scores.argmax(-1)))
    binary_scores, binary_labels = scores[:, :2], rng.integers(0, 2, n)
    assert metrics.binary_f1(binary_scores, binary_labels) == pytest.approx(
        sk.f1_score(binary_labels, binary_scores.argmax(-1)))
    assert metrics.matthews_corrcoef(binary_scores, binary_labels) == pytest.approx(
        sk.matthews_corrcoef(binary_labels, binary_scores.argmax(-1)))
    values = np.round(rng.uniform(0, 5, n), 1)  # rounded: STS-B-like scores with ties
    gold = np.round(values + rng.normal(scale=1.0, size=n), 1)
    assert metrics.pearson(values, gold) == pytest.approx(stats.pearsonr(values, gold)[0])
    assert metrics.spearman(values, gold) == pytest.approx(stats.spearmanr(values, gold)[0])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="non-empty"):
        metrics.accuracy(np.zeros((0, 2)), np.array([], dtype=int))
    with pytest.raises(ValueError, match="constant"):
        metrics.pearson(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match=r"class scores \[N, C\]"):
        metrics.top_k_accuracy(np.zeros(4), np.zeros(4, int), 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.top_k_classes(np.zeros((2, 3)), 0)


def test_top_k_classes_best_first_ties_by_class_order():
    scores = np.array([[0.1, 0.5, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0]])
    assert metrics.top_k_classes(scores, 3).tolist() == [[3, 1, 2], [0, 1, 2]]
    assert metrics.top_k_classes(scores, 9).shape == (2, 4)  # k above C: every class
