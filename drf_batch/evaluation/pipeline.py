"""End-to-end evaluation: load labelled posts, encode them once (clean and corrupted), run the
grid, write the reports, and optionally calibrate a checkpoint's low-quality thresholds."""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch

from drf_batch.data import LABELS, SPLITS, default_image_root, load_labelled_posts
from drf_batch.disruption import DEFAULT_FRACTION_RANGE, corrupt_image, corrupt_text
from drf_batch.evaluation.bank import FeatureBank, SplitArrays
from drf_batch.evaluation.baselines import BlankFeatures, encode_blank_features
from drf_batch.evaluation.grid import GridSpec
from drf_batch.evaluation.outputs import flag_table, write_outputs
from drf_batch.evaluation.quality import FlagQuality
from drf_batch.evaluation.runner import GridTraining, measure_quality_flags, run_grid
from drf_batch.features import FeatureCache, ImageVariant, TextVariant, encode_posts

logger = logging.getLogger(__name__)

CALIBRATION_MAX_FPR = 0.10
"""Largest share of clean val posts that a calibrated low-quality flag may mark. A product flag
that marks most clean images is noise, and the image score separates clean from corrupted
images weakly with frozen encoders (see docs/robustness.md)."""


@dataclass(frozen=True)
class EvaluationOptions:
    """Everything `drf-batch evaluate` needs."""

    data_dir: Path
    out_dir: Path
    spec: GridSpec
    training: GridTraining
    image_encoder: str
    text_encoder: str
    cache_dir: Path | None = None
    quick_posts: int | None = None
    """Take only this many posts from each split (a smoke run); None takes all."""
    calibrate: Path | None = None
    threads: int = 0
    workers: int = 1
    corruption_seed: int = 0
    """Seed of the corrupted copy of each post, the same for every grid seed."""


@dataclass(frozen=True)
class EncodedPosts:
    """Feature banks of the three splits and the blank stand-in features."""

    banks: dict[str, FeatureBank]
    blanks: BlankFeatures
    seconds: float


def take_per_split(posts: pl.DataFrame, count: int) -> pl.DataFrame:
    """Return the first ``count`` posts of each split by post id, for a smoke run."""
    return pl.concat([posts.filter(pl.col("split") == split).sort("post_id").head(count) for split in SPLITS])


def corruption_variants(image_encoder, text_encoder, *, seed: int) -> tuple[ImageVariant, TextVariant]:  # noqa: ANN001
    """Return the cached image and text corruptions: 40–80% of pixels or words masked.

    Pixels are masked after resizing the shorter side to the encoder's resize size, so the mask
    survives the downscaling of preprocessing. Words become the tokenizer's mask token.
    """
    low, high = DEFAULT_FRACTION_RANGE
    resize = image_encoder.preprocessing.resize
    mask_token = text_encoder.tokenizer.mask_token
    if not mask_token:
        raise ValueError(f"text encoder {text_encoder.name!r} has no mask token; text corruption needs one")

    def apply_image(image, item_seed: int):  # noqa: ANN001, ANN202
        return corrupt_image(image, seed=item_seed, resize=resize)

    def apply_text(text: str, item_seed: int) -> str:
        return corrupt_text(text, mask_token=mask_token, seed=item_seed)

    image_variant = ImageVariant(key=f"corrupt:{low:g}-{high:g}:resize={resize}:seed={seed}", apply=apply_image)
    text_variant = TextVariant(key=f"corrupt:{low:g}-{high:g}:mask={mask_token}:seed={seed}", apply=apply_text)
    return image_variant, text_variant


def encode_banks(
    posts: pl.DataFrame,
    image_encoder,  # noqa: ANN001
    text_encoder,  # noqa: ANN001
    *,
    image_root: Path,
    cache: FeatureCache,
    corruption_seed: int,
    labels: tuple[str, ...] = LABELS,
) -> EncodedPosts:
    """Encode every post clean and corrupted (through the cache) and split into feature banks."""
    started = time.perf_counter()
    image_variant, text_variant = corruption_variants(image_encoder, text_encoder, seed=corruption_seed)
    clean = encode_posts(posts, image_encoder, text_encoder, image_root=image_root, cache=cache)
    corrupted = encode_posts(posts, image_encoder, text_encoder, image_root=image_root, cache=cache,
                             image_variant=image_variant, text_variant=text_variant)

    label_index = {label: index for index, label in enumerate(labels)}
    label_values = np.array([label_index[label] for label in posts["label"].to_list()], dtype=np.int64)
    splits = np.array(posts["split"].to_list())
    banks = {}
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        if rows.size == 0:
            raise ValueError(f"the {split} split is empty; the evaluation needs train, val and test posts")
        banks[split] = FeatureBank(
            post_ids=tuple(clean.post_ids[row] for row in rows),
            labels=label_values[rows],
            clean_image=clean.image[rows],
            clean_text=clean.text[rows],
            corrupted_image=corrupted.image[rows],
            corrupted_text=corrupted.text[rows],
            # A corruption that fails (it cannot on a readable image) leaves the clean presence.
            image_present=clean.image_present[rows] & corrupted.image_present[rows],
            text_present=clean.text_present[rows] & corrupted.text_present[rows],
        )

    train_texts = posts.filter(pl.col("split") == "train")["text"].drop_nulls().to_list()
    mask_words = max(1, int(statistics.median(len(text.split()) for text in train_texts))) if train_texts else 1
    blanks = encode_blank_features(image_encoder, text_encoder, mask_words=mask_words)
    return EncodedPosts(banks=banks, blanks=blanks, seconds=time.perf_counter() - started)


def fit_for_grid(head: torch.nn.Module, train: SplitArrays, val: SplitArrays, *, seed: int,
                 training: GridTraining) -> dict[str, object]:
    """Train one grid head with the shared training loop; return its best epoch."""
    from drf_batch.train import TrainingOptions, fit_head

    options = TrainingOptions(
        epochs=training.epochs,
        batch_size=training.batch_size,
        head_lr=training.learning_rate,
        weight_decay=training.weight_decay,
        seed=seed,
    )
    result = fit_head(head, train, val, options=options, num_classes=len(LABELS), progress=False)
    return {"best_epoch": result.best_epoch}


def run_evaluation(options: EvaluationOptions) -> str:
    """Run `drf-batch evaluate` and return a short summary for the terminal."""
    from drf_batch.encoders.registry import build_image_encoder, build_text_encoder

    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    posts = load_labelled_posts(options.data_dir)
    if options.quick_posts is not None:
        posts = take_per_split(posts, options.quick_posts)
    counts = {split: posts.filter(pl.col("split") == split).height for split in SPLITS}
    logger.info("evaluating on %s posts (%s)", posts.height, ", ".join(f"{k} {v}" for k, v in counts.items()))

    image_encoder = build_image_encoder(options.image_encoder)
    text_encoder = build_text_encoder(options.text_encoder)
    cache = FeatureCache(options.cache_dir)
    encoded = encode_banks(posts, image_encoder, text_encoder, image_root=default_image_root(options.data_dir),
                           cache=cache, corruption_seed=options.corruption_seed)
    logger.info("features ready in %.0f s", encoded.seconds)

    lines: list[str] = []
    if options.spec.model_names:
        lines.extend(_run_and_report(options, encoded, counts, started))
    options.out_dir.mkdir(parents=True, exist_ok=True)

    if options.calibrate is not None:
        flags = calibrate_checkpoint(options.calibrate, encoded.banks, image_encoder=options.image_encoder,
                                     text_encoder=options.text_encoder)
        calibration = [dict(flag.to_dict(), seed=0) for flag in flags]
        (options.out_dir / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
        lines.append(f"calibrated {options.calibrate}:")
        lines.append(flag_table(calibration))
    return "\n".join(lines)


def _run_and_report(options: EvaluationOptions, encoded: EncodedPosts, counts: dict[str, int],
                    started: float) -> list[str]:
    """Run the grid, write its outputs and return the terminal summary lines."""
    # The training loop logs every epoch at INFO; across hundreds of heads that buries the grid's
    # progress bar, so it is quietened for the grid only.
    train_logger = logging.getLogger("drf_batch.train")
    previous_level = train_logger.level
    train_logger.setLevel(max(previous_level, logging.WARNING))
    try:
        results = run_grid(options.spec, encoded.banks, blanks=encoded.blanks, num_classes=len(LABELS),
                           training=options.training, train_function=fit_for_grid, workers=options.workers)
    finally:
        train_logger.setLevel(previous_level)
    total_seconds = time.perf_counter() - started

    header = _report_header(options, counts, encoded.seconds, results.seconds, total_seconds)
    write_outputs(options.out_dir, results, spec=options.spec, labels=LABELS, header=header)
    _write_run_record(options, counts, encoded.seconds, results.seconds, total_seconds)
    return [
        f"evaluated {options.spec.count_jobs()} models in {total_seconds:.0f} s "
        f"(features {encoded.seconds:.0f} s, grid {results.seconds:.0f} s)",
        f"report: {options.out_dir / 'report.md'}",
    ]


def calibrate_checkpoint(checkpoint: Path, banks: dict[str, FeatureBank], *, image_encoder: str,
                         text_encoder: str, max_false_positive_rate: float = CALIBRATION_MAX_FPR) -> list[FlagQuality]:
    """Calibrate the low-quality thresholds of a checkpoint on val and write them into it.

    The threshold maximises Youden's J among those that flag at most ``max_false_positive_rate``
    of the clean val posts. The checkpoint must use the encoders the banks were encoded with. Thresholds go into both
    config.json (``thresholds``) and the head's threshold buffers in model.safetensors, which is
    where the exported bundle reads them from.
    """
    from drf_batch.checkpoint import load_checkpoint

    head, config = load_checkpoint(checkpoint)
    names = (config.image_encoder.get("name"), config.text_encoder.get("name"))
    if names != (image_encoder, text_encoder):
        raise ValueError(
            f"checkpoint {checkpoint} uses encoders {names}, but the evaluation encoded posts with "
            f"{(image_encoder, text_encoder)}; pass --image-encoder {names[0]} --text-encoder {names[1]}"
        )
    if config.finetuned_encoders:
        # NOTE: the feature banks come from the registry's frozen weights, so fine-tuned encoders
        # would give other features and a wrong threshold.
        raise ValueError(f"checkpoint {checkpoint} has fine-tuned encoders; calibration supports frozen encoders only")
    flags = measure_quality_flags(head, banks, seed=0, max_false_positive_rate=max_false_positive_rate)
    by_modality = {flag.modality: flag.threshold for flag in flags}
    write_checkpoint_thresholds(checkpoint, image=by_modality["image"], text=by_modality["text"],
                                max_false_positive_rate=max_false_positive_rate)
    return flags


def write_checkpoint_thresholds(checkpoint: Path, *, image: float, text: float,
                                max_false_positive_rate: float = CALIBRATION_MAX_FPR) -> None:
    """Replace the low-quality log-p thresholds in a checkpoint's weights and config.json."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from drf_batch.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    weights_path = Path(checkpoint) / WEIGHTS_FILE
    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights_path))
    for name in ("low_quality_threshold_v", "low_quality_threshold_t"):
        if name not in tensors:
            raise ValueError(f"checkpoint weights {weights_path} lack the buffer {name}; retrain with this drf-batch")
    tensors["low_quality_threshold_v"] = torch.tensor(image, dtype=tensors["low_quality_threshold_v"].dtype)
    tensors["low_quality_threshold_t"] = torch.tensor(text, dtype=tensors["low_quality_threshold_t"].dtype)
    save_file(tensors, str(weights_path), metadata=metadata)

    config_path = Path(checkpoint) / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["thresholds"] = {"image": image, "text": text}
    config.setdefault("training", {})["low_quality_calibration"] = {
        "method": "Youden's J on val, clean vs corrupted (40-80% of pixels or words masked), "
                  f"flagging at most {max_false_positive_rate:.0%} of clean val posts",
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _report_header(options: EvaluationOptions, counts: dict[str, int], feature_seconds: float,
                   grid_seconds: float, total_seconds: float) -> str:
    spec = options.spec
    training = options.training
    return "\n".join([
        "# Robustness evaluation",
        "",
        f"- data: `{options.data_dir}` (train {counts['train']}, val {counts['val']}, test {counts['test']} posts)"
        + (" — QUICK smoke run, numbers are meaningless" if options.quick_posts else ""),
        f"- encoders (frozen): image `{options.image_encoder}`, text `{options.text_encoder}`",
        f"- seeds: {', '.join(map(str, spec.seeds))}; heads trained {training.epochs} epochs, batch "
        f"{training.batch_size}, AdamW lr {training.learning_rate:g}, cosine decay; best epoch by val weighted F1",
        f"- models trained: {spec.count_jobs()}; runtime {total_seconds:.0f} s "
        f"(encoding {feature_seconds:.0f} s, grid {grid_seconds:.0f} s) on {platform.machine()} with "
        + (f"{options.workers} worker processes of 1 torch thread" if options.workers > 1
           else f"{torch.get_num_threads()} torch threads"),
        "- cells: mean±std over seeds in percent; the std is the sample standard deviation",
    ])


def _write_run_record(options: EvaluationOptions, counts: dict[str, int], feature_seconds: float,
                      grid_seconds: float, total_seconds: float) -> None:
    record = {
        "data_dir": str(options.data_dir),
        "posts": counts,
        "quick": options.quick_posts is not None,
        "image_encoder": options.image_encoder,
        "text_encoder": options.text_encoder,
        "spec": asdict(options.spec),
        "training": asdict(options.training),
        "corruption_seed": options.corruption_seed,
        "models_trained": options.spec.count_jobs(),
        "seconds": {"features": feature_seconds, "grid": grid_seconds, "total": total_seconds},
        "torch_threads": torch.get_num_threads(),
        "workers": options.workers,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (options.out_dir / "grid.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
