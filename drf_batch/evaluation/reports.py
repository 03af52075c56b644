"""Results tables, Markdown reports and plots of an evaluation run.

The results frame has one row per model × test setting × seed, with the columns of
``RESULT_COLUMNS``. Tables follow the shape of the robustness tables of the paper that introduced
DRF: methods as rows, ``ACC/wF1`` cells as mean ± sample standard deviation over seeds,
in percent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from drf_batch.evaluation.grid import KINDS, MODALITIES, model_label

logger = logging.getLogger(__name__)

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "setting": pl.String(),
    "strategy": pl.String(),
    "kind": pl.String(),
    "modality": pl.String(),
    "dr": pl.Float64(),
    "seed": pl.Int64(),
    "accuracy": pl.Float64(),
    "weighted_f1": pl.Float64(),
    "macro_f1": pl.Float64(),
    "n_test": pl.Int64(),
    "best_epoch": pl.Int64(),
    "train_seconds": pl.Float64(),
    "train_cpu_seconds": pl.Float64(),
}
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA)
METRICS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1")


def results_frame(rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
    """Build the results frame from result rows, with the columns in their fixed order and types."""
    if not rows:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    return pl.DataFrame([{column: row.get(column) for column in RESULT_COLUMNS} for row in rows], schema=RESULT_SCHEMA)


def summarise(results: pl.DataFrame) -> pl.DataFrame:
    """Aggregate seeds: mean and sample standard deviation of each metric per model and setting."""
    aggregations: list[pl.Expr] = [pl.len().alias("seeds")]
    for metric in METRICS:
        aggregations.append(pl.col(metric).mean().alias(f"{metric}_mean"))
        aggregations.append(pl.col(metric).std(ddof=1).fill_null(0.0).alias(f"{metric}_std"))
    keys = ["model", "setting", "strategy", "kind", "modality", "dr"]
    return results.group_by(keys, maintain_order=True).agg(aggregations)


def _cell(row: Mapping[str, object] | None, metrics: Sequence[str] = ("accuracy", "weighted_f1")) -> str:
    if row is None:
        return "–"
    parts = []
    for metric in metrics:
        mean = float(row[f"{metric}_mean"])  # type: ignore[arg-type]
        std = float(row[f"{metric}_std"])  # type: ignore[arg-type]
        parts.append(f"{100 * mean:.1f}±{100 * std:.1f}")
    return " / ".join(parts)


def _lookup(summary: pl.DataFrame) -> dict[tuple[str, str], dict[str, object]]:
    return {(row["model"], row["setting"]): row for row in summary.iter_rows(named=True)}


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def clean_table(summary: pl.DataFrame, models: Sequence[str]) -> str:
    """Markdown table of undisrupted test results: ACC, weighted F1 and macro F1 per model."""
    cells = _lookup(summary)
    rows = [
        [model_label(model), _cell(cells.get((model, "clean")), METRICS)]
        for model in models
    ]
    return _markdown_table(["method", "ACC / wF1 / macro F1 (clean test)"], rows)


def fixed_table(summary: pl.DataFrame, models: Sequence[str], *, kinds: Sequence[str] = KINDS) -> str:
    """Markdown table of modality-fixed results with one block of methods per disrupted modality."""
    cells = _lookup(summary)
    rows = []
    for modality in MODALITIES:
        for model in models:
            row = [modality, model_label(model)]
            row.extend(_cell(cells.get((model, f"fixed/{modality}/{kind}"))) for kind in kinds)
            rows.append(row)
    return _markdown_table(["disrupted modality", "method", *kinds], rows)


def random_table(summary: pl.DataFrame, models: Sequence[str], *, kind: str, rates: Sequence[float]) -> str:
    """Markdown table of modality-random results for one disruption kind: methods × rates."""
    cells = _lookup(summary)
    rows = []
    for model in models:
        row = [model_label(model), _cell(cells.get((model, "clean")))]
        row.extend(_cell(cells.get((model, f"random/{kind}/dr={dr:g}"))) for dr in rates)
        rows.append(row)
    return _markdown_table(["method", "dr = 0 (clean)", *(f"dr = {dr:g}" for dr in rates)], rows)


def win_loss_summary(summary: pl.DataFrame, models: Sequence[str], *, reference: str = "concat") -> str:
    """List, per model, the settings where its mean accuracy beats or trails the reference model.

    A difference smaller than the larger of the two standard deviations counts as a tie, because
    three seeds cannot separate it from noise.
    """
    cells = _lookup(summary)
    settings = list(dict.fromkeys(summary["setting"].to_list()))
    lines = []
    for model in models:
        if model == reference:
            continue
        wins, losses, ties = [], [], []
        for setting in settings:
            ours, theirs = cells.get((model, setting)), cells.get((reference, setting))
            if ours is None or theirs is None:
                continue
            delta = float(ours["accuracy_mean"]) - float(theirs["accuracy_mean"])  # type: ignore[arg-type]
            noise = max(float(ours["accuracy_std"]), float(theirs["accuracy_std"]))  # type: ignore[arg-type]
            entry = f"{setting} ({100 * delta:+.1f})"
            if abs(delta) <= noise:
                ties.append(entry)
            elif delta > 0:
                wins.append(entry)
            else:
                losses.append(entry)
        lines.append(f"- **{model_label(model)}** vs {model_label(reference)}: "
                     f"{len(wins)} wins, {len(losses)} losses, {len(ties)} within noise.")
        if wins:
            lines.append(f"  - wins: {', '.join(wins)}")
        if losses:
            lines.append(f"  - losses: {', '.join(losses)}")
    return "\n".join(lines)


def plot_accuracy_vs_rate(summary: pl.DataFrame, models: Sequence[str], path: Path, *,
                          kinds: Sequence[str] = KINDS, rates: Sequence[float]) -> Path:
    """Plot mean test accuracy against the disruption rate: one panel per kind, one line per model.

    The point at dr = 0 is the clean setting. Error bars are the standard deviation over seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _lookup(summary)
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), sharey=True, squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        for model in models:
            xs, means, stds = [], [], []
            for dr, setting in [(0.0, "clean"), *((dr, f"random/{kind}/dr={dr:g}") for dr in rates)]:
                row = cells.get((model, setting))
                if row is None:
                    continue
                xs.append(dr)
                means.append(100 * float(row["accuracy_mean"]))  # type: ignore[arg-type]
                stds.append(100 * float(row["accuracy_std"]))  # type: ignore[arg-type]
            # A model without modality-random runs (an ablation limited to other strategies)
            # has only the clean point, which is no curve.
            if len(xs) > 1:
                axis.errorbar(xs, means, yerr=stds, marker="o", markersize=3, capsize=2, label=model_label(model))
        axis.set_title(f"modality-random, {kind}")
        axis.set_xlabel("disruption rate dr")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    rows_of_legend = math.ceil(len(labels) / 4) if labels else 0
    figure.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path, *, title: str) -> Path:
    """Plot a confusion matrix (rows true, columns predicted) with counts and row-normalised shades."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    figure, axis = plt.subplots(figsize=(3.8, 3.4))
    axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if shares[i, j] > 0.6 else "black"
            axis.text(j, i, f"{counts[i, j]}\n{100 * shares[i, j]:.0f}%", ha="center", va="center", color=colour, fontsize=8)
    axis.set_xticks(range(len(labels)), labels, rotation=30)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
