"""Robustness evaluation: baselines, the disruption grid, quality-flag calibration and reports."""
