"""Validation of a posts Parquet file's schema, done before any scoring work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

POST_ID = "post_id"
TEXT = "text"
IMAGE_PATH = "image_path"
IMAGE_BYTES = "image_bytes"
CREATED_AT = "created_at"
KNOWN_COLUMNS = (POST_ID, TEXT, IMAGE_PATH, IMAGE_BYTES, CREATED_AT)


class InputFileError(ValueError):
    """The input file cannot be scored at all: it is missing, empty, corrupt or has a wrong schema."""


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _is_binary(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def _is_integer(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type)


def _is_timestamp_like(data_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(data_type) or pa.types.is_date(data_type)


# Column name -> (predicate on the Arrow type, the accepted types as shown in error messages).
_ACCEPTED_TYPES = {
    POST_ID: (lambda t: _is_string(t) or _is_integer(t), "string or integer"),
    TEXT: (lambda t: _is_string(t) or _is_binary(t) or pa.types.is_null(t), "string or binary"),
    IMAGE_PATH: (lambda t: _is_string(t) or pa.types.is_null(t), "string"),
    IMAGE_BYTES: (lambda t: _is_binary(t) or pa.types.is_null(t), "binary or large_binary"),
    CREATED_AT: (
        lambda t: _is_timestamp_like(t) or _is_string(t) or pa.types.is_null(t),
        "timestamp, date or ISO 8601 string",
    ),
}


@dataclass(frozen=True)
class InputSchema:
    """The modality columns a posts file has and the columns passed through into `extra`."""

    has_text: bool
    has_image_path: bool
    has_image_bytes: bool
    has_created_at: bool
    passthrough: tuple[str, ...]


def validate_schema(schema: pa.Schema, *, source: str) -> InputSchema:
    """Check column names and types, raising `InputFileError` that names the column and the fix."""
    names = schema.names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputFileError(f"{source}: column names {duplicated} appear more than once; rename them")
    if POST_ID not in names:
        raise InputFileError(
            f"{source}: required column 'post_id' is missing (columns found: {names}). "
            "Add a unique string post_id per row."
        )
    for name, (accepts, expected) in _ACCEPTED_TYPES.items():
        if name not in names:
            continue
        found = schema.field(name).type
        if not accepts(found):
            raise InputFileError(
                f"{source}: column '{name}' has type {found}, expected {expected}. "
                f"Cast '{name}' to {expected.split(' or ')[0]} before scoring."
            )
    if not any(name in names for name in (TEXT, IMAGE_PATH, IMAGE_BYTES)):
        raise InputFileError(
            f"{source}: no modality column found (columns: {names}). "
            "A posts file needs at least one of 'text', 'image_path' or 'image_bytes'."
        )
    return InputSchema(
        has_text=TEXT in names,
        has_image_path=IMAGE_PATH in names,
        has_image_bytes=IMAGE_BYTES in names,
        has_created_at=CREATED_AT in names,
        passthrough=tuple(name for name in names if name not in KNOWN_COLUMNS),
    )


def open_posts_file(path: Path) -> tuple[pq.ParquetFile, InputSchema]:
    """Open a posts Parquet file and validate its schema without reading any row data."""
    if not path.exists():
        raise InputFileError(f"input file not found: {path}")
    if not path.is_file():
        raise InputFileError(f"input path is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path} is empty (0 bytes); expected a Parquet file of posts")
    try:
        parquet_file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
        raise InputFileError(
            f"{path} is not a readable Parquet file ({error}). Re-export it as Parquet."
        ) from error
    input_schema = validate_schema(parquet_file.schema_arrow, source=str(path))
    return parquet_file, input_schema
