"""Every SQL statement the dashboard runs against a scores database.

Each function takes an open DuckDB connection first, aggregates or pages inside DuckDB and returns a
small pandas DataFrame or plain values, so no function materialises a whole table. Filter values
always travel as bound parameters. Column names and sort orders only come from the allow-lists in
this module, and JSON keys of passed-through columns travel as bound JSON paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

STATES: tuple[str, ...] = ("ok", "low_quality", "missing", "unreadable")
MODALITIES: tuple[str, ...] = ("image", "text")

# The scores columns that the dashboard reads; a database without one of them is rejected.
REQUIRED_SCORE_COLUMNS: frozenset[str] = frozenset(
    {
        "post_id", "bundle_id", "run_id", "input_path", "row_number", "graph", "label", "confidence",
        "probs", "image_state", "text_state", "image_quality", "text_quality",
        "image_quality_recovered", "text_quality_recovered", "w_paired", "w_image", "w_text",
        "image_error", "text_error", "image_path", "text", "created_at", "extra", "scored_at",
    }
)
REQUIRED_TABLES: tuple[str, ...] = ("runs", "bundles", "scores", "rejects")

QUALITY_COLUMNS: dict[str, str] = {
    "image": "image_quality",
    "text": "text_quality",
    "image_recovered": "image_quality_recovered",
    "text_recovered": "text_quality_recovered",
}

POST_COLUMNS = (
    "post_id, bundle_id, run_id, input_path, row_number, graph, label, confidence, probs, "
    "image_state, text_state, image_quality, text_quality, image_quality_recovered, "
    "text_quality_recovered, w_paired, w_image, w_text, image_error, text_error, image_path, text, "
    "created_at, CAST(extra AS VARCHAR) AS extra, scored_at"
)

# Sort orders offered by the post explorer. The threshold orders take the threshold as a parameter.
SORT_ORDERS: dict[str, str] = {
    "confidence_asc": "confidence ASC NULLS LAST, post_id",
    "confidence_desc": "confidence DESC NULLS LAST, post_id",
    "post_id": "post_id",
    "created_at_desc": "created_at DESC NULLS LAST, post_id",
    "image_threshold_distance": "abs(image_quality - ?) ASC NULLS LAST, post_id",
    "text_threshold_distance": "abs(text_quality - ?) ASC NULLS LAST, post_id",
}

# Values whose JSON encoding is the value itself in double quotes (no escapes, no Unicode).
PLAIN_JSON_VALUE = re.compile(r"[A-Za-z0-9 _.:@/+-]*")

TREND_GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
EXTRA_KEY_SAMPLE_ROWS = 10_000
MAX_EXTRA_VALUES = 200


@dataclass(frozen=True)
class Scope:
    """The bundle (and optionally one run) whose scores a page shows."""

    bundle_id: str | None
    run_id: str | None = None


@dataclass(frozen=True)
class PostFilter:
    """Filters of the post explorer. Empty tuples and None mean "no restriction"."""

    scope: Scope
    labels: tuple[str, ...] = ()
    confidence_min: float = 0.0
    confidence_max: float = 1.0
    image_states: tuple[str, ...] = ()
    text_states: tuple[str, ...] = ()
    image_quality_range: tuple[float, float] | None = None
    text_quality_range: tuple[float, float] | None = None
    text_contains: str = ""
    post_id: str = ""
    # (JSON key, accepted values) pairs for columns passed through from the input in `extra`.
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)


def json_path(key: str) -> str:
    """Return the JSON path that selects top-level `key`, quoted so that any key is addressed."""
    if '"' in key or "\\" in key:
        raise ValueError(f"unsupported passed-through column name {key!r}: it contains a quote or backslash")
    return f'$."{key}"'


def _scope_conditions(scope: Scope) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    if scope.bundle_id is not None:
        conditions.append("bundle_id = ?")
        params.append(scope.bundle_id)
    if scope.run_id is not None:
        conditions.append("run_id = ?")
        params.append(scope.run_id)
    return conditions, params


def _where(conditions: list[str]) -> str:
    return "WHERE " + " AND ".join(conditions) if conditions else ""


def post_conditions(post_filter: PostFilter) -> tuple[str, list[Any]]:
    """Build the WHERE clause and its parameters for `post_filter`."""
    conditions, params = _scope_conditions(post_filter.scope)

    if post_filter.labels:
        conditions.append("list_contains(?::VARCHAR[], label)")
        params.append(list(post_filter.labels))
    if post_filter.confidence_min > 0.0:
        conditions.append("confidence >= ?")
        params.append(post_filter.confidence_min)
    if post_filter.confidence_max < 1.0:
        conditions.append("confidence <= ?")
        params.append(post_filter.confidence_max)
    if post_filter.image_states:
        conditions.append("list_contains(?::VARCHAR[], image_state)")
        params.append(list(post_filter.image_states))
    if post_filter.text_states:
        conditions.append("list_contains(?::VARCHAR[], text_state)")
        params.append(list(post_filter.text_states))
    if post_filter.image_quality_range is not None:
        conditions.append("image_quality BETWEEN ? AND ?")
        params.extend(post_filter.image_quality_range)
    if post_filter.text_quality_range is not None:
        conditions.append("text_quality BETWEEN ? AND ?")
        params.extend(post_filter.text_quality_range)
    if post_filter.text_contains:
        conditions.append("contains(lower(text), lower(?))")
        params.append(post_filter.text_contains)
    if post_filter.post_id:
        conditions.append("post_id = ?")
        params.append(post_filter.post_id)
    for key, values in post_filter.extra:
        if not values:
            continue
        if all(PLAIN_JSON_VALUE.fullmatch(value) for value in values):
            # A plain value appears verbatim and quoted in the JSON text, so a substring test
            # discards most rows before the slower JSON parsing confirms the key.
            conditions.append(
                "(" + " OR ".join("contains(CAST(extra AS VARCHAR), ?)" for _ in values) + ")"
            )
            params.extend(f'"{value}"' for value in values)
        conditions.append("list_contains(?::VARCHAR[], json_extract_string(extra, ?))")
        params.extend([list(values), json_path(key)])

    return _where(conditions), params


# Database layout -------------------------------------------------------------------------------


def missing_schema(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """Return the tables and scores columns that the dashboard needs but the database lacks."""
    tables = {
        row[0]
        for row in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    missing = [f"table {name}" for name in REQUIRED_TABLES if name not in tables]
    if "scores" in tables:
        columns = {
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'main' AND table_name = 'scores'"
            ).fetchall()
        }
        missing.extend(f"column scores.{name}" for name in sorted(REQUIRED_SCORE_COLUMNS - columns))
    return missing


def bundles(connection: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return each bundle with its thresholds, newest run first (bundles without runs last)."""
    return connection.execute(
        """
        SELECT b.bundle_id, b.name, b.path, b.labels, b.image_threshold, b.text_threshold,
               count(r.run_id) AS runs, max(r.started_at) AS last_run_started_at
        FROM bundles b LEFT JOIN runs r USING (bundle_id)
        GROUP BY ALL
        ORDER BY last_run_started_at DESC NULLS LAST, b.name, b.bundle_id
        """
    ).df()


def runs(connection: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return every run, newest first."""
    return connection.execute(
        """
        SELECT * FROM runs
        ORDER BY started_at DESC NULLS LAST, run_id
        """
    ).df()


# Overview --------------------------------------------------------------------------------------


def state_label_counts(connection: duckdb.DuckDBPyConnection, scope: Scope) -> pd.DataFrame:
    """Count posts and mean confidence per (modality, state, label) in one scan of the scores.

    Columns: modality ("image" or "text"), state, label, posts, mean_confidence.
    """
    conditions, params = _scope_conditions(scope)
    return connection.execute(
        f"""
        SELECT CASE WHEN grouping(image_state) = 0 THEN 'image' ELSE 'text' END AS modality,
               coalesce(image_state, text_state) AS state,
               label,
               count(*) AS posts,
               avg(confidence) AS mean_confidence
        FROM scores
        {_where(conditions)}
        GROUP BY GROUPING SETS ((image_state, label), (text_state, label))
        ORDER BY modality, state, label
        """,
        params,
    ).df()


def rejected_count(connection: duckdb.DuckDBPyConnection, scope: Scope) -> int:
    conditions, params = _scope_conditions(scope)
    row = connection.execute(f"SELECT count(*) FROM rejects {_where(conditions)}", params).fetchone()
    return int(row[0]) if row else 0


def running_runs(connection: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Return runs whose status is still `running` (their rows are still arriving)."""
    return connection.execute(
        "SELECT run_id, bundle_name, input_path, started_at FROM runs WHERE status = 'running' "
        "ORDER BY started_at"
    ).df()


# Trends ----------------------------------------------------------------------------------------


def created_at_span(connection: duckdb.DuckDBPyConnection, scope: Scope) -> tuple[Any, Any, int]:
    """Return (earliest, latest, number of posts with a timestamp) of `created_at`."""
    conditions, params = _scope_conditions(scope)
    row = connection.execute(
        f"SELECT min(created_at), max(created_at), count(created_at) FROM scores {_where(conditions)}",
        params,
    ).fetchone()
    assert row is not None
    return row[0], row[1], int(row[2])


def label_trend(connection: duckdb.DuckDBPyConnection, scope: Scope, granularity: str) -> pd.DataFrame:
    """Count posts per time bucket and label, with the share of flagged modalities per bucket.

    Columns: period, label, posts, image_flagged, text_flagged, where *_flagged counts posts whose
    state is not `ok`.
    """
    if granularity not in TREND_GRANULARITIES:
        raise ValueError(f"invalid granularity {granularity!r}; expected one of {TREND_GRANULARITIES}")
    conditions, params = _scope_conditions(scope)
    conditions.append("created_at IS NOT NULL")
    return connection.execute(
        f"""
        SELECT date_trunc(?, created_at) AS period, label, count(*) AS posts,
               count_if(image_state <> 'ok') AS image_flagged,
               count_if(text_state <> 'ok') AS text_flagged
        FROM scores
        {_where(conditions)}
        GROUP BY ALL
        ORDER BY period, label
        """,
        [granularity, *params],
    ).df()


# Quality ---------------------------------------------------------------------------------------


def quality_histogram(
    connection: duckdb.DuckDBPyConnection, scope: Scope, quality: str, bins: int
) -> pd.DataFrame:
    """Bin the finite values of one quality column into `bins` equal-width bins, split by state.

    `quality` is a key of QUALITY_COLUMNS. The state split uses the modality's own state column.
    Columns: bin_start, bin_end, state, posts. Empty when no finite value exists.
    """
    column = QUALITY_COLUMNS[quality]
    state_column = "image_state" if quality.startswith("image") else "text_state"
    if bins < 1:
        raise ValueError(f"invalid bin count {bins}; expected a positive integer")
    conditions, params = _scope_conditions(scope)
    conditions.append(f"isfinite({column})")
    where = _where(conditions)

    row = connection.execute(f"SELECT min({column}), max({column}) FROM scores {where}", params).fetchone()
    if row is None or row[0] is None:
        return pd.DataFrame(columns=["bin_start", "bin_end", "state", "posts"])
    low, high = float(row[0]), float(row[1])
    width = (high - low) / bins if high > low else 1.0

    return connection.execute(
        f"""
        SELECT ? + bin * ? AS bin_start, ? + (bin + 1) * ? AS bin_end, state, posts
        FROM (
            SELECT least(CAST(floor(({column} - ?) / ?) AS INTEGER), ? - 1) AS bin,
                   {state_column} AS state, count(*) AS posts
            FROM scores {where}
            GROUP BY ALL
        )
        ORDER BY bin_start, state
        """,
        [low, width, low, width, low, width, bins, *params],
    ).df()


def count_in_quality_range(
    connection: duckdb.DuckDBPyConnection, scope: Scope, quality: str, low: float, high: float
) -> int:
    column = QUALITY_COLUMNS[quality]
    conditions, params = _scope_conditions(scope)
    conditions.append(f"{column} BETWEEN ? AND ?")
    row = connection.execute(
        f"SELECT count(*) FROM scores {_where(conditions)}", [*params, low, high]
    ).fetchone()
    return int(row[0]) if row else 0


# Post explorer ---------------------------------------------------------------------------------


def extra_keys(connection: duckdb.DuckDBPyConnection, scope: Scope) -> list[str]:
    """Return the passed-through column names found in a sample of the scope's `extra` values.

    NOTE: only EXTRA_KEY_SAMPLE_ROWS rows of the scope (whichever DuckDB reads first) are
    inspected, so a key that appears in few rows of a large table may not be offered.
    """
    conditions, params = _scope_conditions(scope)
    conditions.append("extra IS NOT NULL")
    rows = connection.execute(
        f"""
        SELECT DISTINCT unnest(json_keys(extra)) AS key
        FROM (SELECT extra FROM scores {_where(conditions)} LIMIT {EXTRA_KEY_SAMPLE_ROWS})
        ORDER BY key
        """,
        params,
    ).fetchall()
    return [row[0] for row in rows if '"' not in row[0] and "\\" not in row[0]]


def extra_values(connection: duckdb.DuckDBPyConnection, scope: Scope, key: str) -> pd.DataFrame:
    """Return the most frequent values of passed-through column `key` with their post counts."""
    conditions, params = _scope_conditions(scope)
    return connection.execute(
        f"""
        SELECT json_extract_string(extra, ?) AS value, count(*) AS posts
        FROM scores {_where(conditions)}
        GROUP BY value
        HAVING value IS NOT NULL
        ORDER BY posts DESC, value
        LIMIT {MAX_EXTRA_VALUES}
        """,
        [json_path(key), *params],
    ).df()


def _order_by(sort: str, thresholds: tuple[float | None, float | None]) -> tuple[str, list[Any]]:
    if sort not in SORT_ORDERS:
        raise ValueError(f"invalid sort order {sort!r}; expected one of {sorted(SORT_ORDERS)}")
    if sort == "image_threshold_distance":
        return SORT_ORDERS[sort], [thresholds[0] if thresholds[0] is not None else 0.0]
    if sort == "text_threshold_distance":
        return SORT_ORDERS[sort], [thresholds[1] if thresholds[1] is not None else 0.0]
    return SORT_ORDERS[sort], []


def count_posts(connection: duckdb.DuckDBPyConnection, post_filter: PostFilter) -> int:
    where, params = post_conditions(post_filter)
    row = connection.execute(f"SELECT count(*) FROM scores {where}", params).fetchone()
    return int(row[0]) if row else 0


def post_page(
    connection: duckdb.DuckDBPyConnection,
    post_filter: PostFilter,
    sort: str,
    thresholds: tuple[float | None, float | None],
    limit: int,
    offset: int,
) -> pd.DataFrame:
    """Return one page of filtered posts with every column the explorer shows."""
    where, params = post_conditions(post_filter)
    order_by, order_params = _order_by(sort, thresholds)
    # The inner query sorts row ids only and the outer one reads the full columns of the page's
    # rows. On 10 million rows this cut a page at offset 5,000,000 from 30 s to under 5 s
    # (benchmarks/dashboard.py), because the sort no longer carries every column.
    return connection.execute(
        f"""
        SELECT {POST_COLUMNS} FROM scores
        WHERE rowid IN (SELECT rowid FROM scores {where} ORDER BY {order_by} LIMIT ? OFFSET ?)
        ORDER BY {order_by}
        """,
        [*params, *order_params, int(limit), int(offset), *order_params],
    ).df()


def export_posts(
    connection: duckdb.DuckDBPyConnection,
    post_filter: PostFilter,
    sort: str,
    thresholds: tuple[float | None, float | None],
    destination: Path,
    file_format: str,
) -> int:
    """Write every filtered post to `destination` as CSV or Parquet inside DuckDB; return the row count."""
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"invalid export format {file_format!r}; expected 'csv' or 'parquet'")
    where, params = post_conditions(post_filter)
    order_by, order_params = _order_by(sort, thresholds)
    columns = POST_COLUMNS
    if file_format == "csv":
        # CSV has no list type, so the probabilities are written as a JSON-style list.
        columns = columns.replace("probs,", "CAST(probs AS VARCHAR) AS probs,")
    options = "FORMAT csv, HEADER true" if file_format == "csv" else "FORMAT parquet"
    # The destination is a temporary path chosen by the app, never user input, so it may be inlined.
    quoted_destination = "'" + str(destination).replace("'", "''") + "'"
    connection.execute(
        f"COPY (SELECT {columns} FROM scores {where} ORDER BY {order_by}) TO {quoted_destination} ({options})",
        [*params, *order_params],
    )
    return count_posts(connection, post_filter)


def image_bytes_from_input(
    connection: duckdb.DuckDBPyConnection, input_path: str, row_numbers: tuple[int, ...]
) -> dict[int, tuple[str | None, bytes]]:
    """Read (post_id, image_bytes) of the given 0-based rows back from the input Parquet of a run.

    The post_id lets the caller check that the file still has the same rows as when it was scored.
    """
    if not row_numbers:
        return {}
    rows = connection.execute(
        """
        SELECT file_row_number, CAST(post_id AS VARCHAR), image_bytes
        FROM read_parquet(?, file_row_number = true)
        WHERE list_contains(?::BIGINT[], file_row_number) AND image_bytes IS NOT NULL
        """,
        [input_path, list(row_numbers)],
    ).fetchall()
    return {int(number): (post_id, bytes(data)) for number, post_id, data in rows}


def input_has_image_bytes(connection: duckdb.DuckDBPyConnection, input_path: str) -> bool:
    rows = connection.execute(
        "SELECT name FROM parquet_schema(?) WHERE name = 'image_bytes'", [input_path]
    ).fetchall()
    return bool(rows)


# Runs and rejects ------------------------------------------------------------------------------


def reject_reasons(connection: duckdb.DuckDBPyConnection, run_id: str | None) -> pd.DataFrame:
    """Group rejects by reason code. Columns: reason_code, rows, runs, example_reason, example_row."""
    conditions: list[str] = []
    params: list[Any] = []
    if run_id is not None:
        conditions.append("run_id = ?")
        params.append(run_id)
    return connection.execute(
        f"""
        SELECT reason_code, count(*) AS rows, count(DISTINCT run_id) AS runs,
               arg_min(reason, row_number) AS example_reason,
               min(row_number) AS example_row
        FROM rejects {_where(conditions)}
        GROUP BY reason_code
        ORDER BY rows DESC, reason_code
        """,
        params,
    ).df()


def reject_page(
    connection: duckdb.DuckDBPyConnection, run_id: str | None, reason_code: str | None, limit: int, offset: int
) -> pd.DataFrame:
    conditions: list[str] = []
    params: list[Any] = []
    if run_id is not None:
        conditions.append("run_id = ?")
        params.append(run_id)
    if reason_code is not None:
        conditions.append("reason_code = ?")
        params.append(reason_code)
    return connection.execute(
        f"""
        SELECT post_id, reason_code, reason, input_path, row_number, run_id, bundle_id,
               CAST(extra AS VARCHAR) AS extra, rejected_at
        FROM rejects {_where(conditions)}
        ORDER BY input_path, row_number
        LIMIT ? OFFSET ?
        """,
        [*params, int(limit), int(offset)],
    ).df()


def compare_runs(connection: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> pd.DataFrame:
    """Count the posts both runs scored, by the label and modality states each run gave them.

    Columns: label_a, label_b, image_state_a, image_state_b, text_state_a, text_state_b, posts.
    A post is shared when both runs wrote a score for its post_id. Scores keep only the latest
    run per post and bundle, so two runs of the same bundle share nothing.
    """
    return connection.execute(
        """
        SELECT a.label AS label_a, b.label AS label_b,
               a.image_state AS image_state_a, b.image_state AS image_state_b,
               a.text_state AS text_state_a, b.text_state AS text_state_b,
               count(*) AS posts
        FROM scores a JOIN scores b ON a.post_id = b.post_id
        WHERE a.run_id = ? AND b.run_id = ?
        GROUP BY ALL
        ORDER BY posts DESC
        """,
        [run_a, run_b],
    ).df()


def disagreement_page(
    connection: duckdb.DuckDBPyConnection, run_a: str, run_b: str, limit: int, offset: int
) -> pd.DataFrame:
    """Return shared posts whose labels differ between the two runs, least confident first."""
    return connection.execute(
        """
        SELECT a.post_id, a.label AS label_a, a.confidence AS confidence_a,
               b.label AS label_b, b.confidence AS confidence_b,
               a.image_state AS image_state_a, b.image_state AS image_state_b,
               a.text_state AS text_state_a, b.text_state AS text_state_b, a.text
        FROM scores a JOIN scores b ON a.post_id = b.post_id
        WHERE a.run_id = ? AND b.run_id = ? AND a.label <> b.label
        ORDER BY least(a.confidence, b.confidence), a.post_id
        LIMIT ? OFFSET ?
        """,
        [run_a, run_b, int(limit), int(offset)],
    ).df()
