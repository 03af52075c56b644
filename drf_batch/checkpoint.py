"""DRF checkpoints: a folder with `model.safetensors` (weights and buffers) and `config.json`.

config.json contains the labels, the encoders and their preprocessing, the DRF config, the frozen
queue statistics, the low-quality thresholds and the training record. Nothing is pickled.
When the encoders were fine-tuned, their weights sit in the same safetensors file under the
prefixes `image_encoder.` and `text_encoder.`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from drf_batch.model import DRFConfig, DRFHead

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
IMAGE_ENCODER_PREFIX = "image_encoder."
TEXT_ENCODER_PREFIX = "text_encoder."
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
"""The trained head for the default encoders that ships with the package."""


@dataclass(frozen=True)
class CheckpointConfig:
    """The contents of config.json."""

    labels: tuple[str, ...]
    image_encoder: dict[str, Any]
    """{"name", "dim", "preprocessing"}; preprocessing is ImagePreprocessing.to_dict()."""
    text_encoder: dict[str, Any]
    """{"name", "dim", "max_length"}."""
    drf: DRFConfig
    statistics: dict[str, dict[str, Any]]
    """Frozen queue statistics, {"image": {"mu": [...], "sigma": float, "threshold": float}, "text": ...}.
    The threshold is the enqueue gate log(mean_j p_j) of the frozen queue."""
    thresholds: dict[str, float | None]
    """{"image": log p, "text": log p} below which a present modality is flagged low quality;
    None flags nothing."""
    training: dict[str, Any] = field(default_factory=dict)
    finetuned_encoders: bool = False
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "labels": list(self.labels),
            "image_encoder": self.image_encoder,
            "text_encoder": self.text_encoder,
            "drf": self.drf.to_dict(),
            "statistics": self.statistics,
            "thresholds": self.thresholds,
            "training": self.training,
            "finetuned_encoders": self.finetuned_encoders,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointConfig:
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported checkpoint format_version {version!r}; this drf-batch reads version "
                f"{FORMAT_VERSION}. Retrain the model or use the drf-batch release that wrote it."
            )
        missing = sorted(
            {"labels", "image_encoder", "text_encoder", "drf", "statistics", "thresholds"} - set(values)
        )
        if missing:
            raise ValueError(f"checkpoint config.json lacks the fields {missing}; the checkpoint is incomplete")
        return cls(
            labels=tuple(values["labels"]),
            image_encoder=dict(values["image_encoder"]),
            text_encoder=dict(values["text_encoder"]),
            drf=DRFConfig.from_dict(values["drf"]),
            statistics=dict(values["statistics"]),
            thresholds=dict(values["thresholds"]),
            training=dict(values.get("training", {})),
            finetuned_encoders=bool(values.get("finetuned_encoders", False)),
            format_version=version,
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def head_statistics(head: DRFHead) -> dict[str, dict[str, Any]]:
    """Return the frozen queue statistics of a head in the config.json form."""
    return {
        "image": {
            "mu": head.mu_v.tolist(),
            "sigma": float(head.sigma_v),
            "threshold": _finite_or_none(float(head.enqueue_threshold_v)),
        },
        "text": {
            "mu": head.mu_t.tolist(),
            "sigma": float(head.sigma_t),
            "threshold": _finite_or_none(float(head.enqueue_threshold_t)),
        },
    }


def head_thresholds(head: DRFHead) -> dict[str, float | None]:
    """Return the low-quality log-p thresholds of a head; None where it flags nothing."""
    return {
        "image": _finite_or_none(float(head.low_quality_threshold_v)),
        "text": _finite_or_none(float(head.low_quality_threshold_t)),
    }


def save_checkpoint(
    directory: Path,
    head: DRFHead,
    *,
    labels: tuple[str, ...] | list[str],
    image_encoder: dict[str, Any],
    text_encoder: dict[str, Any],
    training: dict[str, Any] | None = None,
    encoders: tuple[nn.Module, nn.Module] | None = None,
) -> CheckpointConfig:
    """Write `head` (and fine-tuned `encoders`, when given) into `directory` and return its config.

    The statistics and thresholds in config.json are read from the head's buffers, so call
    head.freeze_statistics() first.
    """
    if len(labels) != head.config.num_classes:
        raise ValueError(
            f"got {len(labels)} labels {list(labels)} for a head with {head.config.num_classes} classes; "
            "pass one label per class, in class-index order"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tensors = {name: value.detach().cpu().contiguous() for name, value in head.state_dict().items()}
    if encoders is not None:
        image_module, text_module = encoders
        for prefix, module in ((IMAGE_ENCODER_PREFIX, image_module), (TEXT_ENCODER_PREFIX, text_module)):
            for name, value in module.state_dict().items():
                tensors[prefix + name] = value.detach().cpu().contiguous().clone()

    config = CheckpointConfig(
        labels=tuple(labels),
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        drf=head.config,
        statistics=head_statistics(head),
        thresholds=head_thresholds(head),
        training=training or {},
        finetuned_encoders=encoders is not None,
    )
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return config


def read_checkpoint_config(path: Path) -> CheckpointConfig:
    """Read and validate config.json of the checkpoint folder `path`."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"checkpoint config not found: {config_path}; pass a folder written by `drf-batch train`"
        )
    return CheckpointConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))


def load_checkpoint(path: Path | None = None) -> tuple[DRFHead, CheckpointConfig]:
    """Load the DRF head and config of the checkpoint folder `path` (the default model when None).

    The head is returned in eval mode with its frozen statistics and thresholds. Fine-tuned
    encoder weights, if any, are loaded separately with load_encoder_weights().
    """
    directory = DEFAULT_MODEL_DIR if path is None else Path(path)
    config = read_checkpoint_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights_path}; the checkpoint is incomplete")

    tensors = load_file(str(weights_path))
    head_tensors = {
        name: value
        for name, value in tensors.items()
        if not name.startswith((IMAGE_ENCODER_PREFIX, TEXT_ENCODER_PREFIX))
    }
    head = DRFHead(config.drf)
    missing, unexpected = head.load_state_dict(head_tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {weights_path} does not match its DRF config: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    head.eval()
    return head, config


def load_encoder_weights(path: Path, image_encoder: nn.Module, text_encoder: nn.Module) -> None:
    """Load fine-tuned encoder weights from the checkpoint folder `path` into the given encoders."""
    config = read_checkpoint_config(path)
    if not config.finetuned_encoders:
        raise ValueError(
            f"checkpoint {path} contains no encoder weights because it was trained with frozen encoders; "
            "build the encoders from their registry names instead"
        )
    tensors = load_file(str(Path(path) / WEIGHTS_FILE))
    for prefix, module in ((IMAGE_ENCODER_PREFIX, image_encoder), (TEXT_ENCODER_PREFIX, text_encoder)):
        state = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
        module.load_state_dict(state, strict=True)


def default_checkpoint_available() -> bool:
    """Return whether the packaged default model is present."""
    return (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file() and (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file()


__all__ = [
    "CheckpointConfig",
    "DEFAULT_MODEL_DIR",
    "default_checkpoint_available",
    "head_statistics",
    "head_thresholds",
    "load_checkpoint",
    "load_encoder_weights",
    "read_checkpoint_config",
    "save_checkpoint",
]

