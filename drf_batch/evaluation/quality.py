"""Measurement and threshold calibration of the DRF quality flag for corrupted modalities.

The score of an image is ``log p_v`` (the Gaussian log density of its feature under the frozen
image queue statistics) and of a text ``log p_t``. A modality is flagged ``low_quality`` when its
log p is strictly below the threshold. The threshold is calibrated on the val split by Youden's J
statistic (the threshold that maximises true-positive rate minus false-positive rate), optionally
among thresholds that flag at most a given share of clean posts. The positives are corrupted
copies of the val posts and the negatives are the same posts clean. The
test split then gives AUROC, precision and recall on the same clean-versus-corrupted pairs, which
is a balanced set: precision on a real dump depends on how many of its posts are damaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class FlagQuality:
    """Quality-flag measurements of one modality."""

    modality: str
    threshold: float
    auroc_val: float
    auroc_test: float
    precision_test: float
    recall_test: float
    false_positive_rate_test: float
    n_clean_test: int
    n_corrupted_test: int

    def to_dict(self) -> dict[str, float | int | str]:
        """Return the measurements as a JSON-serialisable mapping."""
        return dict(self.__dict__)


def _finite(values: np.ndarray, *, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; the quality flag needs at least one clean and one corrupted value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite log p values; pass only present modalities")
    return array


def quality_auroc(log_p_clean: np.ndarray, log_p_corrupted: np.ndarray) -> float:
    """Return the AUROC of ``-log p`` at telling corrupted inputs (positives) from clean ones.

    0.5 is chance. A value below 0.5 means corrupted inputs get a higher density than clean ones.
    """
    clean = _finite(log_p_clean, name="log_p_clean")
    corrupted = _finite(log_p_corrupted, name="log_p_corrupted")
    labels = np.concatenate([np.zeros(clean.size), np.ones(corrupted.size)])
    scores = -np.concatenate([clean, corrupted])
    return float(roc_auc_score(labels, scores))


def flag_rates(log_p_clean: np.ndarray, log_p_corrupted: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Return (precision, recall, false-positive rate) of the flag ``log p < threshold``."""
    clean = _finite(log_p_clean, name="log_p_clean")
    corrupted = _finite(log_p_corrupted, name="log_p_corrupted")
    true_positives = int(np.sum(corrupted < threshold))
    false_positives = int(np.sum(clean < threshold))
    flagged = true_positives + false_positives
    precision = true_positives / flagged if flagged else 0.0
    return precision, true_positives / corrupted.size, false_positives / clean.size


def calibrate_threshold(
    log_p_clean: np.ndarray, log_p_corrupted: np.ndarray, *, max_false_positive_rate: float = 1.0
) -> float:
    """Return the threshold on log p that maximises Youden's J = recall − false-positive rate.

    Only thresholds that flag at most ``max_false_positive_rate`` of the clean values compete,
    so a score that separates badly cannot flag most clean posts. Candidates are the midpoints
    between consecutive distinct values, plus one value below the minimum (flag nothing). Ties in
    J go to the lowest threshold, which flags the fewest posts.
    """
    if not 0.0 <= max_false_positive_rate <= 1.0:
        raise ValueError(f"max_false_positive_rate must be in [0, 1], got {max_false_positive_rate}")
    clean = np.sort(_finite(log_p_clean, name="log_p_clean"))
    corrupted = np.sort(_finite(log_p_corrupted, name="log_p_corrupted"))
    values = np.unique(np.concatenate([clean, corrupted]))
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1.0]])

    # searchsorted with side="left" counts the values strictly below each candidate.
    recall = np.searchsorted(corrupted, candidates, side="left") / corrupted.size
    false_positive_rate = np.searchsorted(clean, candidates, side="left") / clean.size
    youden = np.where(false_positive_rate <= max_false_positive_rate, recall - false_positive_rate, -np.inf)
    return float(candidates[int(np.argmax(youden))])


def measure_flag(
    modality: str,
    *,
    val_clean: np.ndarray,
    val_corrupted: np.ndarray,
    test_clean: np.ndarray,
    test_corrupted: np.ndarray,
    max_false_positive_rate: float = 1.0,
) -> FlagQuality:
    """Calibrate the threshold of one modality on val and measure the flag on test."""
    threshold = calibrate_threshold(val_clean, val_corrupted, max_false_positive_rate=max_false_positive_rate)
    precision, recall, false_positive_rate = flag_rates(test_clean, test_corrupted, threshold)
    return FlagQuality(
        modality=modality,
        threshold=threshold,
        auroc_val=quality_auroc(val_clean, val_corrupted),
        auroc_test=quality_auroc(test_clean, test_corrupted),
        precision_test=precision,
        recall_test=recall,
        false_positive_rate_test=false_positive_rate,
        n_clean_test=int(np.asarray(test_clean).size),
        n_corrupted_test=int(np.asarray(test_corrupted).size),
    )
