"""Classification metrics reported by training and evaluation: accuracy, weighted F1, macro F1
and the confusion matrix (scikit-learn definitions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    weighted_f1: float
    macro_f1: float
    confusion: list[list[int]]
    """Rows are true classes and columns predicted classes, both in label-index order."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "weighted_f1": self.weighted_f1,
            "macro_f1": self.macro_f1,
            "confusion": self.confusion,
        }

    def summary(self) -> str:
        """Return 'acc 71.4 wF1 70.2 mF1 55.0' (percentages)."""
        return f"acc {100 * self.accuracy:.1f} wF1 {100 * self.weighted_f1:.1f} mF1 {100 * self.macro_f1:.1f}"


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, num_classes: int) -> ClassificationMetrics:
    """Compute the metrics of integer class predictions against integer labels.

    Macro F1 averages over the classes that occur in the labels or the predictions, which is the
    scikit-learn default. Weighted F1 weights each class by its support in the labels.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"expected two 1-D arrays of the same length, got shapes {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on an empty set of labels")
    classes = list(range(num_classes))
    present = sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))
    return ClassificationMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        weighted_f1=float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        macro_f1=float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        confusion=confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    )
