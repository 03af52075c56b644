"""State shared by the dashboard sections: the database, the selected bundle or run, and formatting."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.database import QueryCache
from app.queries import Scope


@dataclass
class DashboardContext:
    """Database, selection and query cache shared by the sections, with the load times of stale results shown."""

    db_path: Path
    image_root: Path | None
    cache: QueryCache
    scope: Scope
    bundle: dict[str, Any] | None
    labels: tuple[str, ...]
    stale_loaded_at: list[float] = field(default_factory=list)

    def query(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a function of `app.queries` through the cache and remember stale results."""
        result = self.cache.run(self.db_path, function, *args)
        if result.stale:
            self.stale_loaded_at.append(result.loaded_at)
        return result.value

    @property
    def thresholds(self) -> tuple[float | None, float | None]:
        """Image and text quality thresholds (log p) of the selected bundle."""
        if self.bundle is None:
            return None, None
        return _finite(self.bundle.get("image_threshold")), _finite(self.bundle.get("text_threshold"))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def format_count(value: int | float) -> str:
    return f"{int(value):,}"


def format_share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def format_number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def is_empty(frame: pd.DataFrame) -> bool:
    return frame is None or frame.empty
