"""The benchmarks' official metrics, in numpy (the library does not depend on scikit-learn or scipy; the tests
check every function against them).

Classification metrics take class scores ``[N, C]`` (or predicted classes ``[N]`` where only the argmax matters)
and integer labels ``[N]``; the regression ones take values ``[N]``. Every function returns a Python float; an
empty input raises instead of returning NaN.
"""

from __future__ import annotations

import numpy as np


def _check(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty [N] array, got shape {labels.shape}")
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return predictions, labels


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """``[N]``: the argmax of class scores ``[N, C]``; predicted classes ``[N]`` are returned as they are."""
    scores = np.asarray(scores)
    return scores.argmax(-1) if scores.ndim == 2 else scores.astype(np.int64)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of examples whose predicted class is the label."""
    scores, labels = _check(scores, labels)
    return float((predicted_classes(scores) == labels).mean())


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The share of examples whose label is among the ``k`` highest scores ``[N, C]`` (ties broken by class
    order, as a stable sort does)."""
    scores, labels = _check(scores, labels)
    return float((top_k_classes(scores, k) == labels[:, None]).any(-1).mean())


def top_k_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """``[N, min(k, C)]``: each row's ``k`` highest-scoring classes of class scores ``[N, C]``, best first (ties
    broken by class order, as a stable sort does)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"top-{k} needs class scores [N, C], got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in ``labels`` of each class's accuracy (ModelNet40's "mAcc")."""
    scores, labels = _check(scores, labels)
    correct = predicted_classes(scores) == labels
    return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def binary_f1(scores: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the ``positive`` class: ``2·TP / (2·TP + FP + FN)`` (0 when there is neither a positive prediction
    nor a positive label, as scikit-learn's ``zero_division=0``)."""
    scores, labels = _check(scores, labels)
    predicted = predicted_classes(scores) == positive
    actual = labels == positive
    tp = float((predicted & actual).sum())
    denominator = 2 * tp + float((predicted & ~actual).sum()) + float((~predicted & actual).sum())
    return 0.0 if denominator == 0 else 2 * tp / denominator


def matthews_corrcoef(scores: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of the predicted classes with the labels (CoLA's metric), in its multi-class form
    (Gorodkin 2004; scikit-learn's): ``(c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²))``; 0 when a factor of
    the denominator is 0 (every prediction, or every label, one class)."""
    scores, labels = _check(scores, labels)
    predicted = predicted_classes(scores)
    classes = np.union1d(predicted, labels)
    t = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    p = np.array([(predicted == c).sum() for c in classes], dtype=np.float64)
    c, s = float((predicted == labels).sum()), float(len(labels))
    denominator = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return 0.0 if denominator == 0 else float((c * s - (p * t).sum()) / denominator)


def pearson(values: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of two ``[N]`` arrays; NaN-free: raises when either is constant."""
    values, labels = _check(np.asarray(values, dtype=np.float64).reshape(-1), np.asarray(labels, np.float64))
    x, y = values - values.mean(), labels - labels.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    if denominator == 0:
        raise ValueError("correlation of a constant array is undefined")
    return float((x * y).sum() / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1…N with ties given their mean rank (scipy's ``rankdata(method="average")``)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(values: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's of the tie-averaged ranks."""
    values, labels = _check(np.asarray(values, dtype=np.float64).reshape(-1), np.asarray(labels, np.float64))
    return pearson(_ranks(values), _ranks(labels))


__all__ = ["accuracy", "binary_f1", "matthews_corrcoef", "mean_class_accuracy", "pearson", "predicted_classes",
           "spearman", "top_k_accuracy", "top_k_classes"]
