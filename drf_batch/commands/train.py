"""`drf-batch train`: train a DRF model on labelled posts and write a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def train(
    source: Path = typer.Argument(
        ...,
        help="Labelled posts: a folder with labels.csv (id,label,split), images/ and texts/, "
        "or a labelled .parquet (post_id, label, optional split, text, image_path or image_bytes).",
    ),
    out: Path = typer.Option(Path("checkpoints/drf"), "--out", help="Checkpoint folder to write."),
    image_root: Optional[Path] = typer.Option(
        None,
        "--image-root",
        help="Folder that relative image_path values resolve against. Default: images/ of a data "
        "folder, or the folder of the Parquet file.",
    ),
    image_encoder: str = typer.Option(
        "efficientnet-lite0", "--image-encoder", help="Image encoder: a registry name or timm:<model name>."
    ),
    image_weights: Optional[Path] = typer.Option(
        None, "--image-weights", help="Weights file (.safetensors or .pth) for a timm: image encoder."
    ),
    text_encoder: str = typer.Option(
        "all-minilm-l6-v2", "--text-encoder", help="Text encoder: a registry name or hf:<name or local folder>."
    ),
    finetune_encoders: bool = typer.Option(
        False,
        "--finetune-encoders",
        help="Train the encoders end to end with the head (meant for a GPU). Default: frozen encoders "
        "with cached features.",
    ),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Number of passes over the train split."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Posts per optimiser step."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak AdamW learning rate of the head."),
    encoder_lr: float = typer.Option(2e-5, "--encoder-lr", help="Peak AdamW learning rate of fine-tuned encoders."),
    min_lr: float = typer.Option(1e-6, "--min-lr", help="Learning rate at the end of the cosine decay."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, shuffling and dropout."),
    d: int = typer.Option(256, "--d", min=1, help="Width d that both modality features are projected to."),
    hidden: int = typer.Option(256, "--hidden", min=1, help="Width of the fusion MLP F and of the fused feature M."),
    queue_size: int = typer.Option(512, "--queue-size", min=2, help="Length L of each feature queue."),
    dropout: float = typer.Option(0.1, "--dropout", help="Dropout inside the fusion MLP."),
    sample_recovery: bool = typer.Option(True, "--sample-recovery/--no-sample-recovery", help="Use the L^s losses."),
    distribution_recovery: bool = typer.Option(
        True, "--distribution-recovery/--no-distribution-recovery", help="Use the L^d losses."
    ),
    quality_weights: bool = typer.Option(
        True, "--quality-weights/--no-quality-weights", help="Weight the fusion branches by Gaussian quality."
    ),
    expansion: bool = typer.Option(
        True, "--expansion/--no-expansion", help="Expand each pair into paired, image and text branches."
    ),
    distribution_constraint: bool = typer.Option(
        True, "--distribution-constraint/--no-distribution-constraint", help="Use the L_dis loss."
    ),
    normalize_weights: bool = typer.Option(
        False, "--normalize-weights/--no-normalize-weights", help="Make a post's branch weights sum to 1."
    ),
    recovery_feature_gradient: bool = typer.Option(
        False,
        "--recovery-feature-gradient/--no-recovery-feature-gradient",
        help="Let L^s move the projected features; off trains only the converters with it.",
    ),
    quality_weight_gradient: bool = typer.Option(
        True,
        "--quality-weight-gradient/--no-quality-weight-gradient",
        help="Backpropagate through the branch weights; off treats them as constants of each step.",
    ),
    reproject_queue: bool = typer.Option(
        True,
        "--reproject-queue/--no-reproject-queue",
        help="Queues store encoder features and apply the current projection; off stores projected features.",
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Feature cache folder. Default: $DRF_BATCH_CACHE/features or ~/.cache/drf-batch/features."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Encode every post without reading or writing the cache."),
    device: Optional[str] = typer.Option(None, "--device", help="Torch device, e.g. cpu or cuda. Default: cuda when available."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch. Default: torch's choice."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    disruption: Optional[str] = typer.Option(
        None,
        "--disruption",
        help="Disrupt modalities: 'random' disrupts a random modality of a fraction --dr of the posts of every "
        "split; 'fixed' disrupts --modality in every test post only. Default: no disruption.",
    ),
    setting: str = typer.Option(
        "C+D", "--setting", help="With --disruption: C corrupts (40-80% of pixels or words masked), D discards, "
        "C+D does each to half of the disrupted posts."
    ),
    dr: float = typer.Option(0.4, "--dr", help="With --disruption random: the fraction of posts disrupted, in [0, 1]."),
    modality: Optional[str] = typer.Option(
        None, "--modality", help="With --disruption fixed: the modality to disrupt, image or text."
    ),
) -> None:
    """Train a DRF model on labelled posts: select the epoch by val weighted F1, report test metrics."""
    import torch

    from drf_batch.data import LabelledDataError
    from drf_batch.features import FeatureCache
    from drf_batch.train import TrainingOptions, train_model

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        options = TrainingOptions(
            epochs=epochs,
            batch_size=batch_size,
            head_lr=lr,
            encoder_lr=encoder_lr,
            min_lr=min_lr,
            weight_decay=weight_decay,
            seed=seed,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    drf = {
        "d": d,
        "hidden": hidden,
        "queue_size": queue_size,
        "dropout": dropout,
        "sample_recovery": sample_recovery,
        "distribution_recovery": distribution_recovery,
        "quality_weights": quality_weights,
        "expansion": expansion,
        "distribution_constraint": distribution_constraint,
        "normalize_weights": normalize_weights,
        "recovery_feature_gradient": recovery_feature_gradient,
        "quality_weight_gradient": quality_weight_gradient,
        "reproject_queue": reproject_queue,
    }
    cache = None if no_cache else FeatureCache(cache_dir)
    training_disruption = None
    if disruption is not None:
        from drf_batch.evaluation.training import TrainingDisruption

        if finetune_encoders:
            raise typer.BadParameter("--disruption needs frozen encoders; leave out --finetune-encoders")
        try:
            training_disruption = TrainingDisruption(mode=disruption, setting=setting, dr=dr, modality=modality, seed=seed)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error

    try:
        run = train_model(
            source,
            out,
            image_encoder=image_encoder,
            text_encoder=text_encoder,
            image_weights=image_weights,
            image_root=image_root,
            drf=drf,
            options=options,
            finetune_encoders=finetune_encoders,
            cache=cache,
            device=device,
            progress=progress,
            disruption=training_disruption,
        )
    except (LabelledDataError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error

    typer.echo(f"checkpoint: {run.checkpoint}")
    typer.echo(f"best epoch: {run.fit.best_epoch} of {options.epochs}")
    typer.echo(f"val:  {run.fit.best_val.summary()}")
    if run.test is not None:
        typer.echo(f"test: {run.test.summary()}")
    else:
        typer.echo("test: no posts in the test split")
