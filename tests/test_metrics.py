"""Classification metrics: accuracy, weighted F1, macro F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from drf_batch.metrics import classification_metrics


def test_metrics_perfect_predictions() -> None:
    labels = np.array([0, 1, 2, 2])

    metrics = classification_metrics(labels, labels, num_classes=3)

    assert metrics.accuracy == 1.0
    assert metrics.weighted_f1 == 1.0
    assert metrics.macro_f1 == 1.0
    assert metrics.confusion == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]


def test_metrics_majority_class_predictions() -> None:
    y_true = np.array([2, 2, 2, 0])
    y_pred = np.array([2, 2, 2, 2])

    metrics = classification_metrics(y_true, y_pred, num_classes=3)

    assert metrics.accuracy == 0.75
    # F1 of class 2 is 2·0.75·1/(1.75) = 6/7 with support 3; class 0 has F1 0 with support 1.
    assert metrics.weighted_f1 == pytest.approx(0.75 * 6 / 7)
    assert metrics.macro_f1 == pytest.approx((6 / 7 + 0) / 2)
    assert metrics.confusion[0] == [0, 0, 1]


def test_metrics_summary_and_dict() -> None:
    metrics = classification_metrics(np.array([0, 1]), np.array([0, 0]), num_classes=2)

    assert metrics.summary().startswith("acc 50.0")
    assert set(metrics.to_dict()) == {"accuracy", "weighted_f1", "macro_f1", "confusion"}


def test_metrics_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        classification_metrics(np.array([0, 1]), np.array([0]), num_classes=2)


def test_metrics_reject_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), num_classes=2)
