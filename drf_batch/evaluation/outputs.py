"""Write the files of an evaluation run: results, report.md, plots and quality.json."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from drf_batch.evaluation.grid import GridSpec, model_label
from drf_batch.evaluation.reports import (
    clean_table,
    fixed_table,
    plot_accuracy_vs_rate,
    plot_confusion_matrix,
    random_table,
    results_frame,
    summarise,
    win_loss_summary,
)
from drf_batch.evaluation.runner import GridResults

logger = logging.getLogger(__name__)


def flag_summary(flags: Sequence[dict[str, object]]) -> pl.DataFrame:
    """Aggregate quality-flag measurements over seeds: mean and std per modality."""
    frame = pl.DataFrame(list(flags))
    columns = ["threshold", "auroc_val", "auroc_test", "precision_test", "recall_test", "false_positive_rate_test"]
    aggregations = []
    for column in columns:
        aggregations.append(pl.col(column).mean().alias(f"{column}_mean"))
        aggregations.append(pl.col(column).std(ddof=1).fill_null(0.0).alias(f"{column}_std"))
    return frame.group_by("modality", maintain_order=True).agg(aggregations)


def flag_table(flags: Sequence[dict[str, object]]) -> str:
    """Markdown table of the quality flag per modality, mean ± std over seeds."""
    lines = [
        "| modality | AUROC val | AUROC test | threshold (log p) | precision test | recall test | FPR test |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in flag_summary(flags).iter_rows(named=True):
        def cell(name: str, digits: int = 3) -> str:
            return f"{row[f'{name}_mean']:.{digits}f}±{row[f'{name}_std']:.{digits}f}"

        lines.append(
            f"| {row['modality']} | {cell('auroc_val')} | {cell('auroc_test')} | {cell('threshold', 1)} | "
            f"{cell('precision_test')} | {cell('recall_test')} | {cell('false_positive_rate_test')} |"
        )
    return "\n".join(lines)


def write_outputs(
    out_dir: Path,
    results: GridResults,
    *,
    spec: GridSpec,
    labels: Sequence[str],
    header: str,
) -> str:
    """Write results.parquet, results.csv, report.md, plots/*.png and quality.json; return report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    frame = results_frame(results.rows)
    frame.write_parquet(out_dir / "results.parquet")
    frame.write_csv(out_dir / "results.csv")
    summary = summarise(frame)
    summary.write_csv(out_dir / "summary.csv")

    models = [model for model in spec.model_names if model in set(frame["model"].to_list())]
    plot_accuracy_vs_rate(summary, models, plots / "accuracy_vs_dr.png", kinds=spec.kinds, rates=spec.rates)
    for model, matrix in results.confusions.items():
        plot_confusion_matrix(matrix, labels, plots / f"confusion_{model}.png",
                              title=f"{model_label(model)}, clean test, {len(spec.seeds)} seed(s) summed")
    (out_dir / "quality.json").write_text(json.dumps(results.flags, indent=2) + "\n", encoding="utf-8")

    sections = [
        header,
        "## Clean test (no disruption)",
        clean_table(summary, models),
        "## Modality-fixed disruption (trained on clean posts; ACC / wF1)",
        fixed_table(summary, models, kinds=spec.kinds),
    ]
    for kind in spec.kinds:
        sections.append(f"## Modality-random disruption, {kind} (trained and tested at dr; ACC / wF1)")
        sections.append(random_table(summary, models, kind=kind, rates=spec.rates))
    if "concat" in models:
        sections.append("## Wins and losses against the concat baseline (mean accuracy, percentage points)")
        sections.append(win_loss_summary(summary, models, reference="concat"))
    if results.flags:
        sections.append("## Quality flag of the clean-trained DRF head (clean vs corrupted posts, val-calibrated)")
        sections.append(flag_table(results.flags))
    sections.append("![accuracy against dr](plots/accuracy_vs_dr.png)")
    report = "\n\n".join(sections) + "\n"
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    return report
