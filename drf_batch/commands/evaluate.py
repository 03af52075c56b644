"""`drf-batch evaluate`: the robustness grid of DRF against baselines under disrupted inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def evaluate(
    data_dir: Path = typer.Argument(
        ...,
        help="Labelled posts: an mvsa-style folder (images/, texts/, labels.csv with a split column) "
        "or a labelled Parquet file.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for results, tables and plots; created if missing."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds; every model is trained once per seed."),
    models: str = typer.Option(
        "drf,concat,attention,text,image",
        help="Comma-separated models: drf, concat, attention, text, image (or all).",
    ),
    ablations: str = typer.Option(
        "all",
        help="Comma-separated DRF ablations, each trained as its own model: sample_recovery, "
        "distribution_recovery, quality_weights, expansion, distribution_constraint, normalize_weights "
        "(or all, or none).",
    ),
    ablation_strategies: str = typer.Option(
        "clean,fixed",
        help="Strategies under which the ablations run: clean, fixed, random. Modality-fixed settings "
        "reuse the clean models, so 'clean,fixed' costs one training per ablation and seed.",
    ),
    rates: str = typer.Option("0.2,0.4,0.6,0.8,1.0", help="Comma-separated disruption rates dr of the "
                              "modality-random settings, each in (0, 1]."),
    epochs: int = typer.Option(5, min=1, help="Training epochs of every head."),
    batch_size: int = typer.Option(128, min=2, help="Training batch size of every head."),
    learning_rate: float = typer.Option(5e-4, help="Peak AdamW learning rate of every head (cosine decay)."),
    image_encoder: str = typer.Option("efficientnet-lite0", help="Image encoder name from the registry."),
    text_encoder: str = typer.Option("all-minilm-l6-v2", help="Text encoder name from the registry."),
    cache_dir: Path = typer.Option(None, help="Feature cache folder [default: $DRF_BATCH_CACHE/features or "
                                   "~/.cache/drf-batch/features]."),
    quick: bool = typer.Option(False, "--quick", help="A smoke run: a few posts per split and one epoch."),
    quick_posts: int = typer.Option(24, min=6, help="With --quick, the number of posts taken from each split."),
    calibrate: Path = typer.Option(
        None,
        help="A checkpoint folder (from `drf-batch train`) whose low-quality thresholds are calibrated on "
        "the val split and written into it, so `drf-batch export-onnx` embeds them.",
    ),
    threads: int = typer.Option(0, min=0, help="PyTorch CPU threads for training; 0 keeps PyTorch's default."),
    workers: int = typer.Option(
        1, min=1, help="Processes that train grid heads in parallel, each with one torch thread."
    ),
) -> None:
    """Train DRF, its ablations and baselines under corrupted and missing modalities, and report.

    With --models none --ablations none --calibrate CHECKPOINT, only the checkpoint's
    thresholds are calibrated.

    Writes results.parquet and results.csv (one row per model, setting and seed), report.md
    (tables of ACC/wF1 mean ± std and a win/loss summary against the concat baseline), plots/,
    quality.json (the quality-flag AUROC, threshold, precision and recall) and grid.json.
    """
    from drf_batch.evaluation.grid import (
        ABLATIONS,
        MODEL_NAMES,
        GridSpec,
        parse_csv_option,
        parse_seeds,
    )
    from drf_batch.evaluation.pipeline import EvaluationOptions, run_evaluation
    from drf_batch.evaluation.runner import GridTraining

    try:
        rate_values = tuple(float(value) for value in rates.split(",") if value.strip())
        spec = GridSpec(
            models=parse_csv_option(models, allowed=MODEL_NAMES, option="--models"),
            ablations=parse_csv_option(ablations, allowed=ABLATIONS, option="--ablations"),
            ablation_strategies=parse_csv_option(
                ablation_strategies, allowed=("clean", "fixed", "random"), option="--ablation-strategies"
            ),
            seeds=parse_seeds(seeds),
            rates=rate_values,
        )
        if not spec.model_names and calibrate is None:
            raise ValueError("no models selected; pass --models and/or --ablations (or --calibrate alone)")
        if not rate_values or any(not 0.0 < value <= 1.0 for value in rate_values):
            raise ValueError(f"invalid --rates {rates!r}; expected comma-separated numbers in (0, 1]")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    options = EvaluationOptions(
        data_dir=data_dir,
        out_dir=out,
        spec=spec,
        training=GridTraining(epochs=1 if quick else epochs, batch_size=batch_size, learning_rate=learning_rate),
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        cache_dir=cache_dir,
        quick_posts=quick_posts if quick else None,
        calibrate=calibrate,
        threads=threads,
        workers=workers,
    )
    summary = run_evaluation(options)
    typer.echo(summary)
