"""Training loop for heads on encoder features, and `drf-batch train` end to end.

`fit_head` trains any head with the DRF signature `forward(feat_v, feat_t, lam_v, lam_t)` whose
output has `.logits` (and, for DRF, `.losses`). It takes the features and λ masks as arrays, so
evaluation trains DRF and its baselines, clean or disrupted, with this same loop.
`train_model` runs the whole command: load labelled posts, encode them through the feature cache,
train, select by val weighted F1, test, and write a checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from drf_batch import __version__
from drf_batch.checkpoint import CheckpointConfig, save_checkpoint
from drf_batch.data import LABELS, default_image_root, load_labelled_posts
from drf_batch.encoders.registry import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    build_image_encoder,
    build_text_encoder,
)
from drf_batch.features import FeatureCache, Features, encode_posts
from drf_batch.images import load_image, preprocess_image, read_image_bytes
from drf_batch.metrics import ClassificationMetrics, classification_metrics
from drf_batch.model import DRFConfig, DRFHead, DRFOutput
from drf_batch.texts import tokenize_texts

if TYPE_CHECKING:
    from drf_batch.evaluation.training import TrainingDisruption

logger = logging.getLogger(__name__)

PREDICT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation settings. The defaults are the published DRF method's: batch 16, 30 epochs, AdamW
    with learning rate 2e-4 for the head and 2e-5 for fine-tuned encoders, cosine decay to 1e-6."""

    epochs: int = 30
    batch_size: int = 16
    head_lr: float = 2e-4
    encoder_lr: float = 2e-5
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    """AdamW weight decay. The PyTorch default, because the published DRF method states none."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this value; None disables clipping."""
    seed: int = 0
    low_quality_quantile: float = 0.05
    """The low-quality threshold of a modality is this quantile of log p over the present val
    features, so about this fraction of clean val posts is flagged. Val, not train, because the
    head has fit the training features: they are denser than unseen posts, and a threshold from
    them flagged 50% of clean test images in one MVSA-Single run."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.low_quality_quantile < 1.0:
            raise ValueError(f"low_quality_quantile must be in (0, 1), got {self.low_quality_quantile}")


class HeadInputs(Protocol):
    """Features, presence masks and integer labels of one split, row-aligned."""

    feat_v: np.ndarray
    feat_t: np.ndarray
    lam_v: np.ndarray
    lam_t: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class HeadDataset:
    """A concrete HeadInputs: feat_v [N, Dv], feat_t [N, Dt] float32, lam_v and lam_t [N] float32
    (1 present, 0 absent) and labels [N] int64."""

    feat_v: np.ndarray
    feat_t: np.ndarray
    lam_v: np.ndarray
    lam_t: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name in ("feat_v", "feat_t", "lam_v", "lam_t"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows but labels has {n}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> HeadDataset:
        """Return the rows selected by a boolean mask or an index array."""
        return HeadDataset(
            feat_v=self.feat_v[rows],
            feat_t=self.feat_t[rows],
            lam_v=self.lam_v[rows],
            lam_t=self.lam_t[rows],
            labels=self.labels[rows],
        )


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    auxiliary_losses: dict[str, float]
    """Mean of each auxiliary loss (L_dis, recovery terms) over the epoch's batches."""
    val: dict[str, Any]
    seconds: float


@dataclass
class FitResult:
    best_epoch: int
    best_val: ClassificationMetrics
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "val": self.best_val.to_dict(),
            "history": [asdict(record) for record in self.history],
            "seconds": self.seconds,
        }


def seed_everything(seed: int) -> None:
    """Seed Python-level, NumPy and torch random generators used by training."""
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tensors(inputs: HeadInputs, rows: np.ndarray | slice, device: torch.device) -> tuple[Tensor, ...]:
    return (
        torch.as_tensor(np.asarray(inputs.feat_v[rows], dtype=np.float32), device=device),
        torch.as_tensor(np.asarray(inputs.feat_t[rows], dtype=np.float32), device=device),
        torch.as_tensor(np.asarray(inputs.lam_v[rows], dtype=np.float32), device=device),
        torch.as_tensor(np.asarray(inputs.lam_t[rows], dtype=np.float32), device=device),
    )


def input_normalization(inputs: HeadInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (mean_v, std_v, mean_t, std_t) of the present features of a split."""
    present_v = np.asarray(inputs.lam_v) > 0.5
    present_t = np.asarray(inputs.lam_t) > 0.5
    if not present_v.any() or not present_t.any():
        raise ValueError(
            f"training data needs at least one present image and one present text, got "
            f"{int(present_v.sum())} images and {int(present_t.sum())} texts"
        )
    image = np.asarray(inputs.feat_v, dtype=np.float64)[present_v]
    text = np.asarray(inputs.feat_t, dtype=np.float64)[present_t]
    return (
        image.mean(0).astype(np.float32),
        image.std(0).astype(np.float32),
        text.mean(0).astype(np.float32),
        text.std(0).astype(np.float32),
    )


@torch.inference_mode()
def predict_probabilities(head: nn.Module, inputs: HeadInputs, *, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """Return class probabilities [N, C] of a head in eval mode."""
    head.eval()
    device = next(head.parameters()).device
    chunks = []
    for start in range(0, len(inputs.labels), batch_size):
        output = head(*_tensors(inputs, slice(start, start + batch_size), device))
        chunks.append(torch.softmax(output.logits, dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def evaluate_head(head: nn.Module, inputs: HeadInputs, *, num_classes: int) -> ClassificationMetrics:
    """Return accuracy, weighted F1 and macro F1 of a head on a split."""
    probabilities = predict_probabilities(head, inputs)
    return classification_metrics(np.asarray(inputs.labels), probabilities.argmax(-1), num_classes=num_classes)


def _snapshot(head: nn.Module) -> dict[str, Tensor]:
    # Buffers that are not saved (the DRF feature queues) are included, because the frozen
    # statistics of the best epoch are computed from its queues.
    state = {f"parameter:{name}": value.detach().clone() for name, value in head.named_parameters()}
    state.update({f"buffer:{name}": value.detach().clone() for name, value in head.named_buffers()})
    return state


@torch.no_grad()
def _restore(head: nn.Module, state: dict[str, Tensor]) -> None:
    for name, value in head.named_parameters():
        value.copy_(state[f"parameter:{name}"])
    for name, value in head.named_buffers():
        value.copy_(state[f"buffer:{name}"])


def _cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Decay each group's learning rate from its initial value to min_lr along a half cosine."""
    initial = [group["lr"] for group in optimizer.param_groups]

    def factors(base: float) -> Callable[[int], float]:
        floor = min(min_lr / base, 1.0) if base > 0 else 1.0

        def factor(step: int) -> float:
            progress = min(step / max(total_steps, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factors(base) for base in initial])


def fit_head(
    head: nn.Module,
    train: HeadInputs,
    val: HeadInputs,
    *,
    options: TrainingOptions = TrainingOptions(),
    num_classes: int | None = None,
    progress: bool = True,
    set_normalization: bool = True,
) -> FitResult:
    """Train `head` on frozen features, keep the state with the best val weighted F1, and finish it.

    The head is modified in place. When it has `set_input_normalization`, the per-dimension mean
    and standard deviation of the present training features are set first (skip that with
    set_normalization=False). When it has `freeze_statistics` (the DRF head), its statistics are
    frozen from the queues of the best epoch and its low-quality thresholds are set to the
    `options.low_quality_quantile` of log p over the val features.
    """
    if len(train.labels) == 0 or len(val.labels) == 0:
        raise ValueError(
            f"training needs non-empty train and val splits, got {len(train.labels)} and {len(val.labels)} posts"
        )
    seed_everything(options.seed)
    device = next(head.parameters()).device
    num_classes = num_classes or int(max(np.max(train.labels), np.max(val.labels)) + 1)
    if set_normalization and hasattr(head, "set_input_normalization"):
        head.set_input_normalization(*(torch.from_numpy(values) for values in input_normalization(train)))

    optimizer = torch.optim.AdamW(head.parameters(), lr=options.head_lr, weight_decay=options.weight_decay)
    result = run_training(
        head,
        head,
        labels=np.asarray(train.labels),
        make_batch=lambda rows: _tensors(train, rows, device),
        evaluate_val=lambda: evaluate_head(head, val, num_classes=num_classes),
        optimizer=optimizer,
        options=options,
        progress=progress,
    )
    if hasattr(head, "freeze_statistics"):
        head.freeze_statistics()
        calibrate_low_quality_thresholds(head, val, quantile=options.low_quality_quantile)
    head.eval()
    return result


def run_training(
    model: nn.Module,
    head: nn.Module,
    *,
    labels: np.ndarray,
    make_batch: Callable[[np.ndarray], tuple[Tensor, ...]],
    evaluate_val: Callable[[], ClassificationMetrics],
    optimizer: torch.optim.Optimizer,
    options: TrainingOptions,
    progress: bool = True,
) -> FitResult:
    """Run the epochs: shuffled batches, cosine-decayed learning rates, val metrics per epoch.

    `model(*make_batch(rows))` returns the head's output for the training rows `rows`. `model` is
    the head itself on frozen features, or the encoders and head together when fine-tuning. At
    the end `model` contains the state of the epoch with the best val weighted F1.
    """
    started = time.perf_counter()
    generator = np.random.default_rng(options.seed)
    device = next(model.parameters()).device
    label_tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    steps_per_epoch = math.ceil(len(label_tensor) / options.batch_size)
    scheduler = _cosine_schedule(optimizer, options.epochs * steps_per_epoch, options.min_lr)

    result: FitResult | None = None
    best_state: dict[str, Tensor] | None = None
    bar = tqdm(total=options.epochs * steps_per_epoch, desc="train", unit="batch", disable=not progress)
    for epoch in range(1, options.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = generator.permutation(len(label_tensor))
        total_loss = 0.0
        auxiliary_sums: dict[str, float] = {}
        for start in range(0, len(order), options.batch_size):
            rows = order[start : start + options.batch_size]
            loss, auxiliary = _training_step(model, make_batch(rows), label_tensor[rows], optimizer, options)
            scheduler.step()
            total_loss += loss
            for name, value in auxiliary.items():
                auxiliary_sums[name] = auxiliary_sums.get(name, 0.0) + value
            bar.update(1)

        if hasattr(head, "refresh_statistics"):
            head.refresh_statistics()
        val_metrics = evaluate_val()
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / steps_per_epoch,
            auxiliary_losses={name: value / steps_per_epoch for name, value in auxiliary_sums.items()},
            val=val_metrics.to_dict(),
            seconds=time.perf_counter() - epoch_started,
        )
        bar.set_postfix_str(f"epoch {epoch} val {val_metrics.summary()}")
        logger.info("epoch %d/%d loss %.4f val %s", epoch, options.epochs, record.train_loss, val_metrics.summary())
        if result is None or val_metrics.weighted_f1 > result.best_val.weighted_f1:
            best_state = _snapshot(model)
            history = result.history if result is not None else []
            result = FitResult(best_epoch=epoch, best_val=val_metrics, history=history)
        result.history.append(record)
    bar.close()

    assert result is not None and best_state is not None
    _restore(model, best_state)
    result.seconds = time.perf_counter() - started
    logger.info("best epoch %d of %d: val %s", result.best_epoch, options.epochs, result.best_val.summary())
    return result


def _training_step(
    model: nn.Module,
    batch: tuple[Tensor, ...],
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    options: TrainingOptions,
) -> tuple[float, dict[str, float]]:
    """Run one optimiser step; return the loss and the auxiliary losses as floats."""
    output = model(*batch)
    auxiliary_losses: dict[str, Tensor] = getattr(output, "losses", {})
    loss = F.cross_entropy(output.logits, labels)
    for value in auxiliary_losses.values():
        loss = loss + value
    if not torch.isfinite(loss):
        values = {name: float(value) for name, value in auxiliary_losses.items()}
        raise FloatingPointError(
            f"training loss became {float(loss)} (auxiliary losses {values}); "
            "lower the learning rate or set max_grad_norm"
        )

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if options.max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
    optimizer.step()
    return float(loss.detach()), {name: float(value.detach()) for name, value in auxiliary_losses.items()}


@torch.inference_mode()
def calibrate_low_quality_thresholds(head: nn.Module, inputs: HeadInputs, *, quantile: float) -> tuple[float, float]:
    """Set the DRF head's low-quality thresholds to the `quantile` of log p_v and log p_t over
    the present features of `inputs`; return (image, text)."""
    head.eval()
    device = next(head.parameters()).device
    log_p_v, log_p_t = [], []
    for start in range(0, len(inputs.labels), PREDICT_BATCH_SIZE):
        output = head(*_tensors(inputs, slice(start, start + PREDICT_BATCH_SIZE), device))
        log_p_v.append(output.log_p_v.cpu().numpy())
        log_p_t.append(output.log_p_t.cpu().numpy())
    values_v = np.concatenate(log_p_v)
    values_t = np.concatenate(log_p_t)
    image = float(np.quantile(values_v[np.isfinite(values_v)], quantile))
    text = float(np.quantile(values_t[np.isfinite(values_t)], quantile))
    head.set_low_quality_thresholds(image, text)
    return image, text


# -- fine-tuning the encoders end to end ---------------------------------------------------------


class EndToEndModel(nn.Module):
    """Image encoder, text encoder and DRF head as one module, for fine-tuning."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, head: DRFHead) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.head = head

    def encode(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.image_encoder(pixel_values), self.text_encoder(input_ids, attention_mask)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, lam_v: Tensor, lam_t: Tensor
    ) -> DRFOutput:
        feat_v, feat_t = self.encode(pixel_values, input_ids, attention_mask)
        return self.head(feat_v, feat_t, lam_v, lam_t)


class PostBatcher:
    """Decode, preprocess and tokenise rows of labelled posts into encoder inputs.

    Absent images become black pixel tensors and absent texts empty strings; λ = 0 keeps both
    out of the head's output.
    """

    def __init__(
        self,
        posts: pl.DataFrame,
        features: Features,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        *,
        image_root: Path,
        device: torch.device,
    ) -> None:
        self.image_paths = posts["image_path"].to_list()
        self.image_bytes = posts["image_bytes"].to_list()
        self.texts = posts["text"].to_list()
        self.image_present = np.asarray(features.image_present)
        self.text_present = np.asarray(features.text_present)
        self.preprocessing = image_encoder.preprocessing
        self.tokenizer = text_encoder.tokenizer
        self.max_length = text_encoder.max_length
        self.image_root = image_root
        self.device = device

    def _pixels(self, row: int) -> np.ndarray:
        size = self.preprocessing.size
        if not self.image_present[row]:
            return np.zeros((3, size, size), dtype=np.float32)
        raw = self.image_bytes[row]
        if raw is None:
            raw = read_image_bytes(self.image_paths[row], root=self.image_root)
        return preprocess_image(load_image(bytes(raw)), self.preprocessing)

    def __call__(self, rows: np.ndarray) -> tuple[Tensor, ...]:
        pixels = np.stack([self._pixels(int(row)) for row in rows])
        texts = [self.texts[int(row)] if self.text_present[row] else "" for row in rows]
        input_ids, attention_mask = tokenize_texts(self.tokenizer, texts, max_length=self.max_length)
        return (
            torch.from_numpy(pixels).to(self.device),
            torch.from_numpy(input_ids).to(self.device),
            torch.from_numpy(attention_mask).to(self.device),
            torch.from_numpy(self.image_present[rows].astype(np.float32)).to(self.device),
            torch.from_numpy(self.text_present[rows].astype(np.float32)).to(self.device),
        )


@torch.inference_mode()
def encode_rows(model: EndToEndModel, batcher: PostBatcher, rows: np.ndarray, labels: np.ndarray) -> HeadDataset:
    """Encode the posts at `rows` with the model's current encoders into head inputs."""
    model.eval()
    image, text = [], []
    for start in range(0, len(rows), PREDICT_BATCH_SIZE // 16):
        pixel_values, input_ids, attention_mask, _, _ = batcher(rows[start : start + PREDICT_BATCH_SIZE // 16])
        feat_v, feat_t = model.encode(pixel_values, input_ids, attention_mask)
        image.append(feat_v.float().cpu().numpy())
        text.append(feat_t.float().cpu().numpy())
    return HeadDataset(
        feat_v=np.concatenate(image),
        feat_t=np.concatenate(text),
        lam_v=batcher.image_present[rows].astype(np.float32),
        lam_t=batcher.text_present[rows].astype(np.float32),
        labels=np.asarray(labels)[rows],
    )


def finetune_end_to_end(
    posts: pl.DataFrame,
    features: Features,
    labels: np.ndarray,
    rows: dict[str, np.ndarray],
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    *,
    image_root: Path,
    drf: dict[str, Any] | None = None,
    options: TrainingOptions = TrainingOptions(),
    num_classes: int = 3,
    progress: bool = True,
) -> tuple[DRFHead, FitResult, ClassificationMetrics | None]:
    """Train the encoders and a DRF head together (learning rates options.encoder_lr and head_lr).

    `features` are the frozen features of the same posts: they give the presence masks and the
    input standardisation, which stays fixed while the encoders move. Each epoch re-encodes the
    val posts with the current encoders to select the best epoch.
    """
    device = next(image_encoder.parameters()).device
    if device.type == "cpu":
        logger.warning("fine-tuning the encoders on the CPU is slow; use a GPU, or train the head alone (the default)")
    seed_everything(options.seed)
    frozen = dataset_from_features(features, labels)
    config = DRFConfig(
        image_dim=frozen.feat_v.shape[1], text_dim=frozen.feat_t.shape[1], num_classes=num_classes, **(drf or {})
    )
    head = DRFHead(config).to(device)
    head.set_input_normalization(*(torch.from_numpy(values) for values in input_normalization(frozen.subset(rows["train"]))))
    model = EndToEndModel(image_encoder, text_encoder, head)
    batcher = PostBatcher(posts, features, image_encoder, text_encoder, image_root=image_root, device=device)

    optimizer = torch.optim.AdamW(
        [
            {"params": list(image_encoder.parameters()) + list(text_encoder.parameters()), "lr": options.encoder_lr},
            {"params": list(head.parameters()), "lr": options.head_lr},
        ],
        weight_decay=options.weight_decay,
    )
    train_rows = rows["train"]
    fit = run_training(
        model,
        head,
        labels=np.asarray(labels)[train_rows],
        make_batch=lambda batch_rows: batcher(train_rows[batch_rows]),
        evaluate_val=lambda: evaluate_head(head, encode_rows(model, batcher, rows["val"], labels), num_classes=num_classes),
        optimizer=optimizer,
        options=options,
        progress=progress,
    )
    head.freeze_statistics()
    calibrate_low_quality_thresholds(
        head, encode_rows(model, batcher, rows["val"], labels), quantile=options.low_quality_quantile
    )
    test = None
    if len(rows.get("test", [])):
        test = evaluate_head(head, encode_rows(model, batcher, rows["test"], labels), num_classes=num_classes)
        logger.info("test %s", test.summary())
    model.eval()
    return head, fit, test


# -- from labelled posts to a checkpoint ---------------------------------------------------------


def dataset_from_features(features: Features, labels: np.ndarray) -> HeadDataset:
    """Return the head inputs of encoded posts: features, λ from the presence masks, labels."""
    if len(features) != len(labels):
        raise ValueError(f"got {len(features)} encoded posts but {len(labels)} labels; pass one label per post")
    return HeadDataset(
        feat_v=np.asarray(features.image, dtype=np.float32),
        feat_t=np.asarray(features.text, dtype=np.float32),
        lam_v=np.asarray(features.image_present, dtype=np.float32),
        lam_t=np.asarray(features.text_present, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )


def label_indices(posts: pl.DataFrame, labels: tuple[str, ...]) -> np.ndarray:
    """Return the class index of each post's label, in the order of `labels`."""
    index = {label: position for position, label in enumerate(labels)}
    unknown = sorted(set(posts["label"].to_list()) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model labels {list(labels)}")
    return np.asarray([index[label] for label in posts["label"].to_list()], dtype=np.int64)


def split_rows(posts: pl.DataFrame, present: np.ndarray) -> dict[str, np.ndarray]:
    """Return the row indices of each split, leaving out posts with neither modality."""
    split = np.asarray(posts["split"].to_list())
    dropped = int((~present).sum())
    if dropped:
        logger.warning("left out %d labelled posts that have neither a readable image nor a text", dropped)
    rows = {name: np.flatnonzero((split == name) & present) for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if len(rows[name]) == 0:
            raise ValueError(
                f"the labelled data has no usable posts in the {name!r} split; give posts split "
                "train and val (a Parquet without a split column is split 80/10/10 by post id)"
            )
    return rows


def train_on_features(
    features: Features,
    labels: np.ndarray,
    rows: dict[str, np.ndarray],
    *,
    drf: dict[str, Any] | None = None,
    options: TrainingOptions = TrainingOptions(),
    num_classes: int = 3,
    progress: bool = True,
) -> tuple[DRFHead, FitResult, ClassificationMetrics | None]:
    """Train a DRF head on encoded posts: `rows` maps train/val/test to row indices.

    `drf` overrides DRFConfig fields other than the encoder widths. Returns the trained head,
    the training record and the test metrics (None when the test split is empty).
    """
    dataset = dataset_from_features(features, labels)
    config = DRFConfig(
        image_dim=dataset.feat_v.shape[1], text_dim=dataset.feat_t.shape[1], num_classes=num_classes, **(drf or {})
    )
    seed_everything(options.seed)
    head = DRFHead(config)
    fit = fit_head(
        head,
        dataset.subset(rows["train"]),
        dataset.subset(rows["val"]),
        options=options,
        num_classes=num_classes,
        progress=progress,
    )
    test = None
    if len(rows.get("test", [])):
        test = evaluate_head(head, dataset.subset(rows["test"]), num_classes=num_classes)
        logger.info("test %s", test.summary())
    return head, fit, test


@dataclass(frozen=True)
class TrainRun:
    """Result of `train_model`: the checkpoint written, its config and the metrics measured."""

    checkpoint: Path
    config: CheckpointConfig
    fit: FitResult
    test: ClassificationMetrics | None


def train_model(
    source: Path,
    output: Path,
    *,
    image_encoder: str = DEFAULT_IMAGE_ENCODER,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
    image_weights: Path | None = None,
    image_root: Path | None = None,
    drf: dict[str, Any] | None = None,
    options: TrainingOptions = TrainingOptions(),
    finetune_encoders: bool = False,
    cache: FeatureCache | None = None,
    device: str | None = None,
    progress: bool = True,
    disruption: TrainingDisruption | None = None,
) -> TrainRun:
    """Train DRF on labelled posts (an MVSA-style folder or a labelled Parquet) into `output`.

    Frozen mode encodes every post once through `cache` (None encodes without caching) and trains
    the head. With `finetune_encoders` the encoders train end to end with the head, starting from
    the same features for the input standardisation. Selects the epoch by val weighted F1,
    reports test metrics and stores them in the checkpoint's training record. `disruption`
    corrupts or discards modalities of the encoded posts first (frozen mode only). Relative image
    paths resolve against `image_root`, by default the folder's `images/` or the Parquet file's folder.
    """
    if disruption is not None and finetune_encoders:
        raise ValueError("training under disruption needs frozen encoders; leave out --finetune-encoders")
    started = time.perf_counter()
    labels_order = LABELS
    posts = load_labelled_posts(Path(source), labels=labels_order)
    if image_root is None:
        image_root = default_image_root(Path(source))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    logger.info("training on %d labelled posts from %s (device %s)", posts.height, source, target)

    image_module = build_image_encoder(image_encoder, weights=image_weights).to(target)
    text_module = build_text_encoder(text_encoder).to(target)
    features = encode_posts(posts, image_module, text_module, image_root=image_root, cache=cache, progress=progress)
    if disruption is not None:
        features = disruption.apply(features, posts, image_module, text_module, image_root=image_root, cache=cache,
                                    progress=progress)
    labels = label_indices(posts, labels_order)
    rows = split_rows(posts, features.image_present | features.text_present)

    if finetune_encoders:
        head, fit, test = finetune_end_to_end(
            posts, features, labels, rows, image_module, text_module,
            image_root=image_root, drf=drf, options=options, num_classes=len(labels_order), progress=progress,
        )
    else:
        head, fit, test = train_on_features(
            features, labels, rows, drf=drf, options=options, num_classes=len(labels_order), progress=progress
        )

    training = {
        # Only the folder or file name, so a checkpoint does not record paths of the machine it was trained on.
        "source": Path(source).name,
        "hyperparameters": asdict(options),
        "seed": options.seed,
        "best_epoch": fit.best_epoch,
        "val": fit.best_val.to_dict(),
        "test": test.to_dict() if test is not None else None,
        "posts": {name: int(len(indices)) for name, indices in rows.items()},
        "history": [asdict(record) for record in fit.history],
        "seconds": time.perf_counter() - started,
        "device": str(target),
        "torch_threads": torch.get_num_threads(),
        "drf_batch_version": __version__,
        "disruption": disruption.to_dict() if disruption is not None else None,
    }
    config = save_checkpoint(
        Path(output),
        head.cpu(),
        labels=labels_order,
        image_encoder={
            "name": image_module.name,
            "dim": image_module.dim,
            "preprocessing": image_module.preprocessing.to_dict(),
        },
        text_encoder={"name": text_module.name, "dim": text_module.dim, "max_length": text_module.max_length},
        training=training,
        encoders=(image_module.cpu(), text_module.cpu()) if finetune_encoders else None,
    )
    logger.info("wrote checkpoint %s", output)
    return TrainRun(checkpoint=Path(output), config=config, fit=fit, test=test)
