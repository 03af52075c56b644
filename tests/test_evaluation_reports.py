"""Tests of the results frame, Markdown tables, win/loss summary and plots."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from drf_batch.evaluation.reports import (
    RESULT_COLUMNS,
    clean_table,
    fixed_table,
    plot_accuracy_vs_rate,
    plot_confusion_matrix,
    random_table,
    results_frame,
    summarise,
    win_loss_summary,
)


def _row(model: str, setting: str, seed: int, accuracy: float) -> dict[str, object]:
    parts = setting.split("/")
    strategy = parts[0]
    kind = modality = None
    dr = None
    if strategy == "fixed":
        modality, kind = parts[1], parts[2]
    elif strategy == "random":
        kind, dr = parts[1], float(parts[2].removeprefix("dr="))
    return {
        "model": model, "setting": setting, "strategy": strategy, "kind": kind, "modality": modality,
        "dr": dr, "seed": seed, "accuracy": accuracy, "weighted_f1": accuracy - 0.01,
        "macro_f1": accuracy - 0.1, "n_test": 100, "best_epoch": 3, "train_seconds": 1.0, "train_cpu_seconds": 0.5,
    }


@pytest.fixture()
def results() -> pl.DataFrame:
    rows = []
    for seed, noise in enumerate((-0.005, 0.0, 0.005)):
        rows.append(_row("drf", "clean", seed, 0.70 + noise))
        rows.append(_row("concat", "clean", seed, 0.70 - noise))
        rows.append(_row("drf", "fixed/text/D", seed, 0.65 + noise))
        rows.append(_row("concat", "fixed/text/D", seed, 0.55 + noise))
        rows.append(_row("drf", "random/C/dr=0.2", seed, 0.60 + noise))
        rows.append(_row("concat", "random/C/dr=0.2", seed, 0.66 + noise))
    return results_frame(rows)


def test_results_frame_columns_fixed(results: pl.DataFrame) -> None:
    assert tuple(results.columns) == RESULT_COLUMNS
    assert results.height == 18
    assert results_frame([]).columns == list(RESULT_COLUMNS)


def test_summarise_mean_and_std(results: pl.DataFrame) -> None:
    summary = summarise(results)

    row = summary.filter((pl.col("model") == "drf") & (pl.col("setting") == "fixed/text/D")).row(0, named=True)
    assert row["seeds"] == 3
    assert row["accuracy_mean"] == pytest.approx(0.65)
    assert row["accuracy_std"] == pytest.approx(0.005)


def test_fixed_table_shape(results: pl.DataFrame) -> None:
    table = fixed_table(summarise(results), ["drf", "concat"])

    lines = table.splitlines()
    assert lines[0] == "| disrupted modality | method | C | D | C+D |"
    # header, separator, two modalities × two models
    assert len(lines) == 2 + 4
    assert "| text | DRF | – | 65.0±0.5 / 64.0±0.5 | – |" in lines


def test_clean_and_random_tables(results: pl.DataFrame) -> None:
    summary = summarise(results)

    assert "70.0±0.5 / 69.0±0.5 / 60.0±0.5" in clean_table(summary, ["drf"])
    random_lines = random_table(summary, ["concat"], kind="C", rates=(0.2, 0.4)).splitlines()
    assert random_lines[0] == "| method | dr = 0 (clean) | dr = 0.2 | dr = 0.4 |"
    assert random_lines[2].endswith("| 66.0±0.5 / 65.0±0.5 | – |")


def test_win_loss_summary_against_concat(results: pl.DataFrame) -> None:
    text = win_loss_summary(summarise(results), ["drf", "concat"])

    assert "1 wins, 1 losses, 1 within noise" in text
    assert "fixed/text/D (+10.0)" in text
    assert "random/C/dr=0.2 (-6.0)" in text


def test_plots_write_png_files(results: pl.DataFrame, tmp_path) -> None:  # noqa: ANN001
    rate_plot = plot_accuracy_vs_rate(summarise(results), ["drf", "concat"], tmp_path / "rates.png", rates=(0.2,))
    confusion_plot = plot_confusion_matrix(
        np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]]), ["negative", "neutral", "positive"],
        tmp_path / "confusion.png", title="DRF",
    )

    for path in (rate_plot, confusion_plot):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
