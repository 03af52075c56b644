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
