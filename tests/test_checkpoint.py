"""Checkpoint folders: safetensors weights plus config.json, written and read without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drf_batch.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_encoder_weights,
    read_checkpoint_config,
    save_checkpoint,
)
from drf_batch.model import DRFConfig, DRFHead

CONFIG = DRFConfig(image_dim=10, text_dim=6, d=8, hidden=8, queue_size=32, dropout=0.0)
LABELS = ("negative", "neutral", "positive")
IMAGE_ENCODER = {"name": "tiny-image", "dim": 10, "preprocessing": {"size": 32}}
TEXT_ENCODER = {"name": "tiny-text", "dim": 6, "max_length": 16}


def trained_head() -> DRFHead:
    torch.manual_seed(0)
    head = DRFHead(CONFIG)
    head.train()
    for _ in range(3):
        head(torch.randn(16, 10), torch.randn(16, 6), torch.ones(16), torch.ones(16))
    head.freeze_statistics()
    head.set_low_quality_thresholds(-4.5, -3.25)
    head.eval()
    return head


def save(tmp_path: Path, head: DRFHead, **options) -> Path:  # type: ignore[no-untyped-def]
    directory = tmp_path / "checkpoint"
    save_checkpoint(
        directory, head, labels=LABELS, image_encoder=IMAGE_ENCODER, text_encoder=TEXT_ENCODER, **options
    )
    return directory


def test_checkpoint_round_trip_gives_same_outputs(tmp_path: Path) -> None:
    head = trained_head()
    directory = save(tmp_path, head, training={"seed": 0, "test": {"accuracy": 0.7}})

    loaded, config = load_checkpoint(directory)

    feat_v, feat_t = torch.randn(4, 10), torch.randn(4, 6)
    lam_v = torch.tensor([1.0, 1.0, 0.0, 1.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0, 1.0])
    for expected, got in zip(head.infer(feat_v, feat_t, lam_v, lam_t), loaded.infer(feat_v, feat_t, lam_v, lam_t)):
        assert torch.equal(torch.nan_to_num(expected, nan=0.0), torch.nan_to_num(got, nan=0.0))
    assert not loaded.training
    assert config.labels == LABELS
    assert config.drf == CONFIG
    assert config.training["test"]["accuracy"] == 0.7
    assert config.finetuned_encoders is False


def test_checkpoint_config_json_has_statistics(tmp_path: Path) -> None:
    head = trained_head()
    directory = save(tmp_path, head)

    values = json.loads((directory / CONFIG_FILE).read_text())

    assert values["format_version"] == 1
    assert values["labels"] == list(LABELS)
    assert values["image_encoder"] == IMAGE_ENCODER
    assert len(values["statistics"]["image"]["mu"]) == CONFIG.d
    assert values["statistics"]["text"]["sigma"] == pytest.approx(float(head.sigma_t))
    assert values["statistics"]["image"]["threshold"] == pytest.approx(float(head.enqueue_threshold_v))
    assert values["thresholds"] == {"image": -4.5, "text": -3.25}


def test_checkpoint_unset_thresholds_are_null(tmp_path: Path) -> None:
    head = trained_head()
    head.set_low_quality_thresholds(float("-inf"), float("-inf"))
    directory = save(tmp_path, head)

    values = json.loads((directory / CONFIG_FILE).read_text())

    assert values["thresholds"] == {"image": None, "text": None}


def test_checkpoint_weights_exclude_queues(tmp_path: Path) -> None:
    directory = save(tmp_path, trained_head())

    names = set(load_file(str(directory / WEIGHTS_FILE)))

    assert "mu_v" in names
    assert "low_quality_threshold_t" in names
    assert not any(name.startswith("queue_") for name in names)


def test_checkpoint_encoder_weights_round_trip(tmp_path: Path) -> None:
    image_encoder = torch.nn.Linear(3, 10)
    text_encoder = torch.nn.Embedding(20, 6)
    directory = save(tmp_path, trained_head(), encoders=(image_encoder, text_encoder))

    fresh_image, fresh_text = torch.nn.Linear(3, 10), torch.nn.Embedding(20, 6)
    load_encoder_weights(directory, fresh_image, fresh_text)
    head, config = load_checkpoint(directory)

    assert config.finetuned_encoders is True
    assert torch.equal(fresh_image.weight, image_encoder.weight)
    assert torch.equal(fresh_text.weight, text_encoder.weight)
    assert isinstance(head, DRFHead)


def test_load_encoder_weights_rejects_frozen_checkpoint(tmp_path: Path) -> None:
    directory = save(tmp_path, trained_head())

    with pytest.raises(ValueError, match="contains no encoder weights"):
        load_encoder_weights(directory, torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))


def test_load_checkpoint_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint config not found"):
        load_checkpoint(tmp_path / "absent")


def test_load_checkpoint_rejects_other_format_version(tmp_path: Path) -> None:
    directory = save(tmp_path, trained_head())
    values = json.loads((directory / CONFIG_FILE).read_text())
    values["format_version"] = 99
    (directory / CONFIG_FILE).write_text(json.dumps(values))

    with pytest.raises(ValueError, match="format_version 99"):
        read_checkpoint_config(directory)


def test_load_checkpoint_rejects_mismatched_weights(tmp_path: Path) -> None:
    directory = save(tmp_path, trained_head())
    values = json.loads((directory / CONFIG_FILE).read_text())
    values["drf"]["d"] = 16
    (directory / CONFIG_FILE).write_text(json.dumps(values))

    with pytest.raises((ValueError, RuntimeError)):
        load_checkpoint(directory)


def test_save_checkpoint_rejects_wrong_label_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one label per class"):
        save_checkpoint(
            tmp_path, trained_head(), labels=("a", "b"), image_encoder=IMAGE_ENCODER, text_encoder=TEXT_ENCODER
        )
