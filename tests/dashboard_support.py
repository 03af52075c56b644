"""Databases and images shared by the dashboard tests."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_SCRIPT = REPO_ROOT / "app" / "dashboard.py"

# The dashboard package `app` and the benchmark data builder live at the repository root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.dashboard_data import SyntheticDatabase, build_synthetic_database  # noqa: E402


def write_synthetic_images(root: Path, rows: int) -> None:
    """Write one small JPEG per synthetic post at the `images/<i>.jpg` paths that the scores name."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(rows):
        color = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
        Image.new("RGB", (48, 32), color).save(folder / f"{index}.jpg")


def build_synthetic_with_images(directory: Path, *, rows: int = 600) -> tuple[SyntheticDatabase, Path]:
    """Build a synthetic scores database and its images; return the database and the image root."""
    database = build_synthetic_database(directory / "synthetic.duckdb", rows=rows)
    image_root = directory / "image-root"
    write_synthetic_images(image_root, rows)
    return database, image_root
