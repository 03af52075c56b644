"""Shared fixtures. Expensive objects (real encoders, an exported bundle) are session-scoped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _mvsa_location() -> Path:
    configured = os.environ.get("DRF_BATCH_MVSA_DIR")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "data" / "mvsa-single"


@pytest.fixture(scope="session")
def mvsa_dir() -> Path:
    """The MVSA-Single folder; tests that need real posts skip when it is absent."""
    location = _mvsa_location()
    if not (location / "labels.csv").is_file():
        pytest.skip(
            f"real MVSA-Single posts not found at {location}; "
            "set DRF_BATCH_MVSA_DIR to the folder that holds labels.csv, images/ and texts/"
        )
    return location


@pytest.fixture(scope="session")
def image_encoder():
    """The default image encoder (EfficientNet-Lite0), built once per test session."""
    from drf_batch.encoders import DEFAULT_IMAGE_ENCODER, build_image_encoder

    return build_image_encoder(DEFAULT_IMAGE_ENCODER)


@pytest.fixture(scope="session")
def text_encoder():
    """The default text encoder (all-MiniLM-L6-v2), built once per test session."""
    from drf_batch.encoders import DEFAULT_TEXT_ENCODER, build_text_encoder

    return build_text_encoder(DEFAULT_TEXT_ENCODER)


def _random_head_checkpoint(directory: Path) -> Path:
    """Write a checkpoint of an untrained DRF head for the default encoders (parity needs no training)."""
    import torch

    from drf_batch.checkpoint import save_checkpoint
    from drf_batch.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder
    from drf_batch.model import DRFConfig, DRFHead

    torch.manual_seed(0)
    head = DRFHead(DRFConfig(image_dim=1280, text_dim=384)).eval()
    with torch.no_grad():
        head.sigma_v.fill_(16.0)
        head.sigma_t.fill_(16.0)
    head.set_low_quality_thresholds(-40.0, -40.0)
    preprocessing = build_image_encoder(DEFAULT_IMAGE_ENCODER).preprocessing.to_dict()
    save_checkpoint(
        directory,
        head,
        labels=("negative", "neutral", "positive"),
        image_encoder={"name": DEFAULT_IMAGE_ENCODER, "dim": 1280, "preprocessing": preprocessing},
        text_encoder={"name": DEFAULT_TEXT_ENCODER, "dim": 384, "max_length": 128},
    )
    return directory


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """A real FP32 bundle exported once per test session, from the packaged default model or,
    while none is packaged, from an untrained head on the default encoders."""
    from drf_batch.checkpoint import default_checkpoint_available
    from drf_batch.export import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("bundle")
    checkpoint = None if default_checkpoint_available() else _random_head_checkpoint(root / "checkpoint")
    result = export_bundle(ExportOptions(out=root / "default", checkpoint=checkpoint))
    return result.bundle


@pytest.fixture(scope="session")
def scored_db(default_bundle, tmp_path_factory) -> Path:
    """sample_data/posts.parquet scored with the default bundle by `drf-batch score`, once per session."""
    from typer.testing import CliRunner

    from drf_batch.cli import app

    db_path = tmp_path_factory.mktemp("scored") / "scores.duckdb"
    arguments = [
        "score", str(REPO_ROOT / "sample_data" / "posts.parquet"),
        "--bundle", str(default_bundle),
        "--image-root", str(REPO_ROOT / "sample_data" / "images"),
        "--db", str(db_path),
        "--providers", "cpu",
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return db_path
