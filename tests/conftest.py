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
