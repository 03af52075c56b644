"""Default locations: the feature cache, the committed default model and the default bundle."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "DRF_BATCH_CACHE"

PACKAGE_DIR = Path(__file__).resolve().parent

# Relative to the working directory, like every other output path the CLI takes.
DEFAULT_BUNDLE_DIR = Path("export") / "default"


def cache_dir() -> Path:
    """Return the cache root: $DRF_BATCH_CACHE when set, else ~/.cache/drf-batch.

    The directory is not created here, so reading the setting has no side effect.
    """
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "drf-batch"


def feature_cache_dir() -> Path:
    """Return the folder of the on-disk feature cache, under `cache_dir()`."""
    return cache_dir() / "features"


def default_model_dir() -> Path:
    """Return the folder of the trained DRF head that ships inside the package."""
    return PACKAGE_DIR / "default_model"
