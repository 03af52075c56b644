"""Build a synthetic scores database of any size with DuckDB SQL, for dashboard tests and benchmarks.

The tables come from `drf_batch.storage.SCHEMA_STATEMENTS`, so the layout matches what
`drf-batch score` writes. Values are derived from `hash(row index)`, so a given size and seed always
produce the same file. States and quality values are consistent with each other: a `low_quality`
modality has a quality value below its bundle's threshold, an `ok` one above it, and a missing or
unreadable one has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from drf_batch.storage import SCHEMA_STATEMENTS

LABELS = ("negative", "neutral", "positive")
IMAGE_THRESHOLD = -550.0
TEXT_THRESHOLD = -480.0
LANGUAGES = ("en", "de", "fr", "es", "pt", "zh", "ja", "ar")


@dataclass(frozen=True)
class SyntheticDatabase:
    """Identifiers of what `build_synthetic_database` wrote."""

    path: Path
    rows: int
    bundle_a: str
    bundle_b: str
    run_a: str
    run_b: str
    shared_rows: int
    rejected_rows: int


def _insert_bundle_and_run(
    connection: duckdb.DuckDBPyConnection, *, bundle_id: str, name: str, run_id: str, rows: int, rejected: int
) -> None:
    connection.execute(
        "INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?)",
        [bundle_id, name, f"export/{name}", list(LABELS), IMAGE_THRESHOLD, TEXT_THRESHOLD, json.dumps({"name": name})],
    )
    seconds = max(rows / 900.0, 0.01)
    connection.execute(
        """
        INSERT INTO runs (run_id, bundle_id, bundle_name, bundle_path, input_path, engine, status,
            started_at, finished_at, rows_in, rows_scored, rows_rejected, rows_skipped, seconds,
            posts_per_second, providers_requested, providers_used, labels, drf_batch_version)
        VALUES (?, ?, ?, ?, 'synthetic/posts.parquet', 'local', 'finished', ?, ?, ?, ?, ?, 0, ?, ?,
            ['CPUExecutionProvider'], ['CPUExecutionProvider'], ?, '0.1.0')
        """,
        [
            run_id, bundle_id, name, f"export/{name}",
            datetime(2024, 4, 1, 12, 0), datetime(2024, 4, 1, 13, 0),
            rows + rejected, rows, rejected, seconds, (rows + rejected) / seconds, list(LABELS),
        ],
    )  # fmt: skip


def _insert_scores(
    connection: duckdb.DuckDBPyConnection, *, bundle_id: str, run_id: str, rows: int, seed: int
) -> None:
    # u1..u6 are independent uniform draws in [0, 1) per row, taken from hashes of the row index.
    connection.execute(
        f"""
        INSERT INTO scores
        WITH draws AS (
            SELECT i,
                   (hash(i, {seed}, 1) % 1000000) / 1e6 AS u1,
                   (hash(i, {seed}, 2) % 1000000) / 1e6 AS u2,
                   (hash(i, {seed}, 3) % 1000000) / 1e6 + 0.05 AS u3,
                   (hash(i, {seed}, 4) % 1000000) / 1e6 + 0.05 AS u4,
                   (hash(i, {seed}, 5) % 1000000) / 1e6 + 0.05 AS u5,
                   (hash(i, {seed}, 6) % 1000000) / 1e6 AS u6
            FROM range({rows}) AS t(i)
        ),
        states AS (
            SELECT *,
                   CASE WHEN u1 < 0.70 THEN 'ok' WHEN u1 < 0.85 THEN 'low_quality'
                        WHEN u1 < 0.95 THEN 'missing' ELSE 'unreadable' END AS image_state,
                   CASE WHEN u1 >= 0.85 THEN 'ok'
                        WHEN u2 < 0.75 THEN 'ok' WHEN u2 < 0.88 THEN 'low_quality'
                        WHEN u2 < 0.97 THEN 'missing' ELSE 'unreadable' END AS text_state,
                   [u3 * u3, u4 * 0.6, u5 * u5 * 1.4] AS raw
            FROM draws
        ),
        scored AS (
            SELECT *, list_transform(raw, lambda x: x / list_sum(raw)) AS probs FROM states
        )
        SELECT 'post-' || lpad(CAST(i AS VARCHAR), 9, '0') AS post_id,
               '{bundle_id}' AS bundle_id, '{run_id}' AS run_id,
               'synthetic/posts.parquet' AS input_path, i AS row_number,
               CASE WHEN image_state IN ('ok', 'low_quality') AND text_state IN ('ok', 'low_quality') THEN 'paired'
                    WHEN image_state IN ('ok', 'low_quality') THEN 'image_only' ELSE 'text_only' END AS graph,
               ['{LABELS[0]}', '{LABELS[1]}', '{LABELS[2]}'][list_position(probs, list_max(probs))] AS label,
               list_max(probs) AS confidence, probs,
               image_state, text_state,
               CASE image_state WHEN 'ok' THEN {IMAGE_THRESHOLD} + 1 + u6 * 200
                                WHEN 'low_quality' THEN {IMAGE_THRESHOLD} - 1 - u6 * 200 END AS image_quality,
               CASE text_state WHEN 'ok' THEN {TEXT_THRESHOLD} + 1 + u2 * 150
                               WHEN 'low_quality' THEN {TEXT_THRESHOLD} - 1 - u2 * 150 END AS text_quality,
               CASE WHEN text_state IN ('ok', 'low_quality') THEN {IMAGE_THRESHOLD} + 50 - u4 * 120 END
                   AS image_quality_recovered,
               CASE WHEN image_state IN ('ok', 'low_quality') THEN {TEXT_THRESHOLD} + 40 - u5 * 100 END
                   AS text_quality_recovered,
               0.2 + u3 * 0.5 AS w_paired, 0.1 + u4 * 0.2 AS w_image, 0.1 + u5 * 0.2 AS w_text,
               CASE WHEN image_state = 'unreadable' THEN 'not_an_image: cannot identify image file' END AS image_error,
               CASE WHEN text_state = 'unreadable' THEN 'invalid_text: undecodable bytes' END AS text_error,
               CASE WHEN image_state <> 'missing' THEN 'images/' || i || '.jpg' END AS image_path,
               CASE WHEN text_state <> 'missing' THEN 'synthetic post number ' || i END AS text,
               TIMESTAMP '2024-01-01' + to_seconds(CAST(hash(i, {seed}, 7) % (90 * 86400) AS BIGINT)) AS created_at,
               json_object('author_id', 'author-' || (hash(i, {seed}, 8) % 50000),
                           'lang', {list(LANGUAGES)}[1 + CAST(hash(i, {seed}, 9) % {len(LANGUAGES)} AS INTEGER)]) AS extra,
               TIMESTAMP '2024-04-01 12:00' AS scored_at
        FROM scored
        """
    )


def build_synthetic_database(path: Path, *, rows: int, shared_rows: int | None = None, seed: int = 0) -> SyntheticDatabase:
    """Write a scores database with `rows` posts scored by bundle A and `shared_rows` of them by bundle B.

    About 0.5% as many rows again go to `rejects`, spread over three reason codes.
    """
    shared = rows // 10 if shared_rows is None else shared_rows
    rejected = max(rows // 200, 3)
    database = SyntheticDatabase(
        path=path, rows=rows, bundle_a="synthbundlea0001", bundle_b="synthbundleb0002",
        run_a="run-a", run_b="run-b", shared_rows=shared, rejected_rows=rejected,
    )  # fmt: skip

    with duckdb.connect(str(path)) as connection:
        connection.execute("SET enable_progress_bar = false")
        for statement in SCHEMA_STATEMENTS:
            connection.execute(statement)
        _insert_bundle_and_run(
            connection, bundle_id=database.bundle_a, name="synthetic-fp32", run_id=database.run_a, rows=rows, rejected=rejected
        )
        _insert_bundle_and_run(
            connection, bundle_id=database.bundle_b, name="synthetic-int8", run_id=database.run_b, rows=shared, rejected=0
        )
        _insert_scores(connection, bundle_id=database.bundle_a, run_id=database.run_a, rows=rows, seed=seed)
        _insert_scores(connection, bundle_id=database.bundle_b, run_id=database.run_b, rows=shared, seed=seed + 1)
        connection.execute(
            f"""
            INSERT INTO rejects
            SELECT NULLIF('reject-' || i, 'reject-0'), '{database.bundle_a}', '{database.run_a}',
                   'synthetic/posts.parquet', {rows} + i,
                   ['no_modality', 'missing_post_id', 'duplicate_post_id'][1 + CAST(i % 3 AS INTEGER)],
                   ['neither an image nor a text is present', 'post_id is null',
                    'post_id was already scored with this bundle'][1 + CAST(i % 3 AS INTEGER)],
                   json_object('lang', 'en'), TIMESTAMP '2024-04-01 12:30'
            FROM range({rejected}) AS t(i)
            """
        )
    return database
