"""Command-line options of the dashboard script (`streamlit run app/dashboard.py -- --db ...`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Fallbacks for runs without script arguments, such as Streamlit's AppTest.
DB_ENV = "DRF_BATCH_DASHBOARD_DB"
IMAGE_ROOT_ENV = "DRF_BATCH_DASHBOARD_IMAGE_ROOT"


@dataclass(frozen=True)
class DashboardSettings:
    db_path: Path | None
    image_root: Path | None


def parse_settings(argv: Sequence[str]) -> DashboardSettings:
    """Read --db and --image-root from `argv`, falling back to the environment variables above.

    Unknown arguments are ignored because Streamlit and test runners leave their own in sys.argv.
    """
    parser = argparse.ArgumentParser(prog="app/dashboard.py", add_help=False)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--image-root", type=Path, default=None)
    options, _ = parser.parse_known_args(list(argv))

    db_path = options.db
    if db_path is None and os.environ.get(DB_ENV):
        db_path = Path(os.environ[DB_ENV])
    image_root = options.image_root
    if image_root is None and os.environ.get(IMAGE_ROOT_ENV):
        image_root = Path(os.environ[IMAGE_ROOT_ENV])

    return DashboardSettings(
        db_path=db_path.expanduser().resolve() if db_path is not None else None,
        image_root=image_root.expanduser().resolve() if image_root is not None else None,
    )
