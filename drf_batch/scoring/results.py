"""Arrow schemas of the score and reject tables that the scoring core returns, and their builders."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

SCORES_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("bundle_id", pa.string()),
        ("run_id", pa.string()),
        ("input_path", pa.string()),
        ("row_number", pa.int64()),
        ("graph", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float64()),
        ("probs", pa.list_(pa.float64())),
        ("image_state", pa.string()),
        ("text_state", pa.string()),
        ("image_quality", pa.float64()),
        ("text_quality", pa.float64()),
        ("image_quality_recovered", pa.float64()),
        ("text_quality_recovered", pa.float64()),
        ("w_paired", pa.float64()),
        ("w_image", pa.float64()),
        ("w_text", pa.float64()),
        ("image_error", pa.string()),
        ("text_error", pa.string()),
        ("image_path", pa.string()),
        ("text", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("extra", pa.string()),
        ("scored_at", pa.timestamp("us")),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("bundle_id", pa.string()),
        ("run_id", pa.string()),
        ("input_path", pa.string()),
        ("row_number", pa.int64()),
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("extra", pa.string()),
        ("rejected_at", pa.timestamp("us")),
    ]
)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _finite_or_null(value: Any) -> Any:
    """Replace NaN and infinities, also inside lists and dicts, with None so the JSON stays valid."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False)


def to_json(values: dict[str, Any]) -> str | None:
    """Serialise pass-through column values for the `extra` column.

    Binary values become base64, dates ISO 8601, and NaN or infinite floats null. A value that
    still cannot be serialised is written as its `str()` form, so no single row fails its batch.
    """
    if not values:
        return None
    try:
        return _dumps({name: _finite_or_null(value) for name, value in values.items()})
    except (TypeError, ValueError, RecursionError):
        pass
    fallback: dict[str, Any] = {}
    for name, value in values.items():
        try:
            cleaned = _finite_or_null(value)
            _dumps(cleaned)
            fallback[str(name)] = cleaned
        except (TypeError, ValueError, RecursionError):
            fallback[str(name)] = str(value)
    return _dumps(fallback)


def nullable_float(values: np.ndarray) -> pa.Array:
    """Convert a float array to float64 Arrow with NaN and infinities as nulls."""
    as_float = np.asarray(values, dtype=np.float64)
    return pa.array(as_float, type=pa.float64(), mask=~np.isfinite(as_float))


def empty_scores() -> pa.Table:
    return SCORES_SCHEMA.empty_table()


def empty_rejects() -> pa.Table:
    return REJECTS_SCHEMA.empty_table()


def rejects_table(
    *,
    post_ids: Sequence[str | None],
    bundle_id: str,
    run_id: str,
    input_path: str,
    row_numbers: Sequence[int],
    reason_codes: Sequence[str],
    reasons: Sequence[str],
    extras: Sequence[str | None],
    rejected_at: datetime,
) -> pa.Table:
    """Build a rejects table from per-row lists of equal length."""
    count = len(row_numbers)
    return pa.table(
        {
            "post_id": pa.array(post_ids, pa.string()),
            "bundle_id": pa.array([bundle_id] * count, pa.string()),
            "run_id": pa.array([run_id] * count, pa.string()),
            "input_path": pa.array([input_path] * count, pa.string()),
            "row_number": pa.array(row_numbers, pa.int64()),
            "reason_code": pa.array(reason_codes, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "extra": pa.array(extras, pa.string()),
            "rejected_at": pa.array([rejected_at] * count, pa.timestamp("us")),
        },
        schema=REJECTS_SCHEMA,
    )
