"""Training: the head loop on synthetic features, and `drf-batch train` through typer's runner."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from drf_batch.checkpoint import load_checkpoint
from drf_batch.cli import app
from drf_batch.model import DRFConfig, DRFHead
from drf_batch.train import HeadDataset, TrainingOptions, evaluate_head, fit_head

IMAGE_DIM = 24
TEXT_DIM = 12


def synthetic_split(n: int, seed: int) -> HeadDataset:
    """Features whose class is visible in both modalities, with some images and texts absent."""
    rng = np.random.default_rng(seed)
    centers_v = np.random.default_rng(100).normal(size=(3, IMAGE_DIM)) * 2
    centers_t = np.random.default_rng(101).normal(size=(3, TEXT_DIM)) * 2
    labels = rng.integers(0, 3, n)
    feat_v = (centers_v[labels] + rng.normal(size=(n, IMAGE_DIM))).astype(np.float32)
    feat_t = (centers_t[labels] + rng.normal(size=(n, TEXT_DIM))).astype(np.float32)
    lam_v = (rng.random(n) > 0.2).astype(np.float32)
    lam_t = np.where(lam_v == 0, 1.0, (rng.random(n) > 0.2)).astype(np.float32)
    feat_v[lam_v == 0] = 0.0
    feat_t[lam_t == 0] = 0.0
    return HeadDataset(feat_v, feat_t, lam_v, lam_t, labels)


def small_head() -> DRFHead:
    return DRFHead(DRFConfig(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, d=16, hidden=16, queue_size=64))


def test_fit_head_learns_separable_classes() -> None:
    train, val = synthetic_split(240, seed=0), synthetic_split(120, seed=1)
    # Normalised weights, as in the packaged default model. With the published unnormalised
    # weights this run stays near the majority class (57% in one run), because the densities
    # shrink the fused feature until the classifier bias dominates.
    head = DRFHead(dataclasses.replace(small_head().config, normalize_weights=True))

    result = fit_head(head, train, val, options=TrainingOptions(epochs=6, head_lr=2e-3), num_classes=3, progress=False)

    assert len(result.history) == 6
    assert 1 <= result.best_epoch <= 6
    # Chance is about 1/3; the classes are separable in either modality alone.
    assert result.best_val.accuracy > 0.7
    assert evaluate_head(head, val, num_classes=3).weighted_f1 == pytest.approx(result.best_val.weighted_f1)


def test_fit_head_freezes_statistics_and_thresholds() -> None:
    train, val = synthetic_split(96, seed=2), synthetic_split(48, seed=3)
    head = small_head()

    fit_head(head, train, val, options=TrainingOptions(epochs=2, low_quality_quantile=0.1), progress=False)

    assert not head.training
    assert torch.isfinite(head.sigma_v)
    assert torch.isfinite(head.enqueue_threshold_t)
    _, quality, _, low_quality = head.infer(
        torch.from_numpy(val.feat_v), torch.from_numpy(val.feat_t), torch.from_numpy(val.lam_v),
        torch.from_numpy(val.lam_t),
    )
    flagged = low_quality[:, 0][torch.from_numpy(val.lam_v) > 0].float().mean()
    assert 0.05 <= float(flagged) <= 0.15
    assert torch.isnan(quality[torch.from_numpy(val.lam_v) == 0, 0]).all()


def test_fit_head_is_deterministic_for_seed() -> None:
    train, val = synthetic_split(64, seed=4), synthetic_split(32, seed=5)
    options = TrainingOptions(epochs=2, seed=3)

    probabilities = []
    for _ in range(2):
        torch.manual_seed(options.seed)
        head = small_head()
        fit_head(head, train, val, options=options, progress=False)
        probabilities.append(head.infer(torch.from_numpy(val.feat_v), torch.from_numpy(val.feat_t), 1.0, 1.0)[0])

    assert torch.equal(probabilities[0], probabilities[1])


def test_fit_head_keeps_best_epoch_state() -> None:
    train, val = synthetic_split(64, seed=6), synthetic_split(64, seed=7)
    head = small_head()

    result = fit_head(head, train, val, options=TrainingOptions(epochs=4, head_lr=5e-3), progress=False)

    best_f1 = max(record.val["weighted_f1"] for record in result.history)
    assert result.best_val.weighted_f1 == best_f1
    assert result.history[result.best_epoch - 1].val["weighted_f1"] == best_f1


def test_fit_head_rejects_empty_val() -> None:
    train = synthetic_split(16, seed=8)
    with pytest.raises(ValueError, match="non-empty train and val"):
        fit_head(small_head(), train, train.subset(np.zeros(16, dtype=bool)), progress=False)


# -- the command --------------------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(color) + rng.normal(0, 25, size=(40, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def labelled_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eighteen labelled posts made here: coloured images, short texts, one post without an image
    and one without a text."""
    colors = {"negative": (200, 30, 30), "neutral": (120, 120, 120), "positive": (30, 200, 60)}
    words = {"negative": "awful day, so sad", "neutral": "the bus leaves at nine", "positive": "great news, so happy"}
    rows = []
    for index in range(18):
        label = ("negative", "neutral", "positive")[index % 3]
        split = ("train", "train", "train", "train", "val", "test")[index // 3]
        rows.append({
            "post_id": f"p{index}",
            "text": None if index == 4 else f"{words[label]} #{index}",
            "image_bytes": None if index == 7 else png_bytes(colors[label], index),
            "label": label,
            "split": split,
        })
    path = tmp_path_factory.mktemp("labelled") / "posts.parquet"
    pl.DataFrame(rows, schema={"post_id": pl.String, "text": pl.String, "image_bytes": pl.Binary,
                               "label": pl.String, "split": pl.String}).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised one-layer BERT with the default encoder's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from drf_batch.encoders.hf_text import minilm_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_model_path()), local_files_only=True)
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


TINY_IMAGE_ENCODER = "timm:test_efficientnet"


def run_train(arguments: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", *arguments])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_train_command_frozen_writes_checkpoint(labelled_parquet: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "checkpoint"
    exit_code, output = run_train([
        str(labelled_parquet), "--out", str(out), "--image-encoder", TINY_IMAGE_ENCODER,
        "--text-encoder", f"hf:{tiny_bert}", "--epochs", "2", "--batch-size", "4", "--d", "16",
        "--hidden", "16", "--queue-size", "8", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
    ])

    assert exit_code == 0, output
    assert "test: acc" in output
    head, config = load_checkpoint(out)
    assert config.drf.d == 16
    assert config.image_encoder["name"] == TINY_IMAGE_ENCODER
    assert config.text_encoder["dim"] == 16
    assert config.finetuned_encoders is False
    assert config.training["seed"] == 0
    assert set(config.training["test"]) >= {"accuracy", "weighted_f1", "macro_f1"}
    assert config.training["posts"] == {"train": 12, "val": 3, "test": 3}
    assert len(config.training["history"]) == 2
    assert config.thresholds["image"] is not None
    assert isinstance(head, DRFHead)
    assert any((tmp_path / "cache").rglob("*.npy"))


def test_train_command_finetunes_encoders(labelled_parquet: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "finetuned"
    exit_code, output = run_train([
        str(labelled_parquet), "--out", str(out), "--image-encoder", TINY_IMAGE_ENCODER,
        "--text-encoder", f"hf:{tiny_bert}", "--finetune-encoders", "--epochs", "1", "--batch-size", "16",
        "--d", "16", "--hidden", "16", "--queue-size", "8", "--no-cache", "--no-progress", "--device", "cpu",
    ])

    assert exit_code == 0, output
    _, config = load_checkpoint(out)
    assert config.finetuned_encoders is True
    values = json.loads((out / "config.json").read_text())
    assert values["training"]["hyperparameters"]["encoder_lr"] == 2e-5


def test_train_command_missing_source(tmp_path: Path) -> None:
    exit_code, output = run_train([str(tmp_path / "absent.parquet"), "--out", str(tmp_path / "out"), "--no-progress"])

    assert exit_code == 2
    assert "not found" in output
