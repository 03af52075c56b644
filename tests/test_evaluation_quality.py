"""Tests of the quality-flag AUROC and threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest

from drf_batch.evaluation.quality import calibrate_threshold, flag_rates, measure_flag, quality_auroc


def test_auroc_perfect_separation() -> None:
    clean = np.array([-1.0, -2.0, -3.0])
    corrupted = np.array([-10.0, -11.0])

    assert quality_auroc(clean, corrupted) == pytest.approx(1.0)


def test_auroc_below_chance_when_corrupted_denser() -> None:
    clean = np.array([-10.0, -11.0])
    corrupted = np.array([-1.0, -2.0])

    assert quality_auroc(clean, corrupted) == pytest.approx(0.0)


def test_calibrated_threshold_splits_separable_sets() -> None:
    clean = np.array([-1.0, -2.0, -3.0])
    corrupted = np.array([-10.0, -11.0])

    threshold = calibrate_threshold(clean, corrupted)

    assert -10.0 < threshold < -3.0
    precision, recall, false_positive_rate = flag_rates(clean, corrupted, threshold)
    assert precision == 1.0
    assert recall == 1.0
    assert false_positive_rate == 0.0


def test_threshold_flag_is_strictly_below() -> None:
    clean = np.array([0.0])
    corrupted = np.array([-1.0])

    precision, recall, _ = flag_rates(clean, corrupted, -1.0)

    assert recall == 0.0
    assert precision == 0.0


def test_calibration_maximises_youden_on_overlap() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, 2000)
    corrupted = rng.normal(-2.0, 1.0, 2000)

    threshold = calibrate_threshold(clean, corrupted)

    # Equal variances and sizes: the J-optimal cut lies midway between the means.
    assert threshold == pytest.approx(-1.0, abs=0.2)


def test_measure_flag_reports_test_metrics() -> None:
    rng = np.random.default_rng(1)
    val_clean, val_corrupted = rng.normal(0, 1, 300), rng.normal(-3, 1, 300)
    test_clean, test_corrupted = rng.normal(0, 1, 200), rng.normal(-3, 1, 100)

    flag = measure_flag("image", val_clean=val_clean, val_corrupted=val_corrupted,
                        test_clean=test_clean, test_corrupted=test_corrupted)

    assert flag.auroc_test > 0.95
    assert flag.recall_test > 0.85
    assert flag.n_clean_test == 200
    assert flag.n_corrupted_test == 100
    assert set(flag.to_dict()) >= {"threshold", "auroc_test", "precision_test", "recall_test"}


def test_nan_log_p_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        quality_auroc(np.array([np.nan]), np.array([-1.0]))


def test_calibration_respects_false_positive_limit() -> None:
    rng = np.random.default_rng(2)
    clean = rng.normal(0.0, 1.0, 1000)
    corrupted = rng.normal(-0.3, 1.0, 1000)

    threshold = calibrate_threshold(clean, corrupted, max_false_positive_rate=0.1)

    _, _, false_positive_rate = flag_rates(clean, corrupted, threshold)
    assert false_positive_rate <= 0.1
    assert np.sum(corrupted < threshold) > 0


def test_calibration_limit_rejects_invalid_rate() -> None:
    with pytest.raises(ValueError, match="max_false_positive_rate"):
        calibrate_threshold(np.array([0.0]), np.array([-1.0]), max_false_positive_rate=1.5)
