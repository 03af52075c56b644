"""DuckDB storage for scoring runs: schema, idempotent per-batch writes and lock handling.

One DuckDB file holds four tables: `runs`, `bundles`, `scores` and `rejects`. Every input row ends in
exactly one of `scores` (keyed by post_id and bundle_id) or `rejects` (keyed by bundle_id, input_path
and row_number). Each batch is written in one transaction, so a run killed at any point leaves whole
batches behind, and a re-run skips the rows that are already stored.

DuckDB allows either one read-write process or any number of read-only processes on a file at a time
(checked with duckdb 2.0). A reader that keeps the file open therefore blocks a writer, and a writer
blocks readers. The writer here opens the file only for the length of one batch transaction and, when
another process holds the lock, waits with backoff and logs who holds it instead of failing. Readers
should use `open_reader`, which retries the same way, and keep their connections short-lived.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

SCHEMA_STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        bundle_id VARCHAR,
        bundle_name VARCHAR,
        bundle_path VARCHAR,
        input_path VARCHAR,
        engine VARCHAR,
        status VARCHAR,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        rows_in BIGINT,
        rows_scored BIGINT,
        rows_rejected BIGINT,
        rows_skipped BIGINT,
        seconds DOUBLE,
        posts_per_second DOUBLE,
        providers_requested VARCHAR[],
        providers_used VARCHAR[],
        labels VARCHAR[],
        drf_batch_version VARCHAR,
        error VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS bundles (
        bundle_id VARCHAR PRIMARY KEY,
        name VARCHAR,
        path VARCHAR,
        labels VARCHAR[],
        image_threshold DOUBLE,
        text_threshold DOUBLE,
        manifest JSON
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS scores (
        post_id VARCHAR NOT NULL,
        bundle_id VARCHAR NOT NULL,
        run_id VARCHAR,
        input_path VARCHAR,
        row_number BIGINT,
        graph VARCHAR,
        label VARCHAR,
        confidence DOUBLE,
        probs DOUBLE[],
        image_state VARCHAR,
        text_state VARCHAR,
        image_quality DOUBLE,
        text_quality DOUBLE,
        image_quality_recovered DOUBLE,
        text_quality_recovered DOUBLE,
        w_paired DOUBLE,
        w_image DOUBLE,
        w_text DOUBLE,
        image_error VARCHAR,
        text_error VARCHAR,
        image_path VARCHAR,
        text VARCHAR,
        created_at TIMESTAMP,
        extra JSON,
        scored_at TIMESTAMP,
        PRIMARY KEY (post_id, bundle_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS rejects (
        post_id VARCHAR,
        bundle_id VARCHAR NOT NULL,
        run_id VARCHAR,
        input_path VARCHAR NOT NULL,
        row_number BIGINT NOT NULL,
        reason_code VARCHAR,
        reason VARCHAR,
        extra JSON,
        rejected_at TIMESTAMP,
        PRIMARY KEY (bundle_id, input_path, row_number)
    )
    """,
)

SCORE_COLUMNS: tuple[str, ...] = (
    "post_id", "bundle_id", "run_id", "input_path", "row_number", "graph", "label", "confidence",
    "probs", "image_state", "text_state", "image_quality", "text_quality", "image_quality_recovered",
    "text_quality_recovered", "w_paired", "w_image", "w_text", "image_error", "text_error",
    "image_path", "text", "created_at", "extra", "scored_at",
)  # fmt: skip

REJECT_COLUMNS: tuple[str, ...] = (
    "post_id", "bundle_id", "run_id", "input_path", "row_number", "reason_code", "reason", "extra",
    "rejected_at",
)  # fmt: skip

DUPLICATE_POST_ID = "duplicate_post_id"

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


class DatabaseBusyError(RuntimeError):
    """Another process held the DuckDB file lock for longer than the caller was willing to wait."""


class LabelMismatchError(ValueError):
    """The database already contains scores whose label set differs from the bundle's labels."""


@dataclass(frozen=True)
class LockPolicy:
    """How long to wait for another process's lock on the database file.

    `timeout_s=None` waits without limit, which is the writer's default so that a reader left open
    on the file pauses a scoring run but never fails it.
    """

    timeout_s: float | None = None
    initial_delay_s: float = 0.05
    max_delay_s: float = 2.0
    warn_every_s: float = 30.0


@dataclass(frozen=True)
class BatchWriteResult:
    """Rows that one `write_batch` call added, after duplicates and already-stored rows were removed."""

    scored: int
    rejected: int
    duplicates: int
    already_stored: int


def _is_lock_error(error: duckdb.Error) -> bool:
    return "Could not set lock on file" in str(error)


def describe_lock_holder(error: duckdb.Error) -> str:
    """Return 'PROGRAM (PID N)' for the process named in a DuckDB lock error, or 'another process'."""
    match = _LOCK_HOLDER.search(str(error))
    if match is None:
        return "another process"
    return f"{match['program']} (PID {match['pid']})"


def connect_with_retry(
    db_path: Path, *, read_only: bool, policy: LockPolicy
) -> duckdb.DuckDBPyConnection:
    """Open the database, retrying with exponential backoff while another process holds its lock.

    Raises `DatabaseBusyError` when `policy.timeout_s` passes without the lock becoming free.
    """
    started = time.monotonic()
    delay = policy.initial_delay_s
    last_warning = started
    warned = False
    while True:
        try:
            connection = duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as error:
            if not _is_lock_error(error):
                raise
            waited = time.monotonic() - started
            holder = describe_lock_holder(error)
            if policy.timeout_s is not None and waited >= policy.timeout_s:
                mode = "read-only" if read_only else "read-write"
                raise DatabaseBusyError(
                    f"could not open {db_path} {mode}: {holder} held its lock for {waited:.0f} s. "
                    "DuckDB lets one writer or several readers use a file at a time; close the "
                    "other connection or retry later."
                ) from error
            if not warned or time.monotonic() - last_warning >= policy.warn_every_s:
                logger.warning(
                    "%s is locked by %s; waiting for it to close the file (waited %.0f s so far)",
                    db_path,
                    holder,
                    waited,
                )
                warned = True
                last_warning = time.monotonic()
            time.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
            continue
        if warned:
            logger.info("%s lock acquired after %.1f s", db_path, time.monotonic() - started)
        return connection


@contextmanager
def open_reader(
    db_path: Path | str, *, timeout_s: float | None = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a short-lived read-only connection, waiting while a scoring run writes a batch.

    Keep the connection only as long as a query takes: while it is open, a scoring run on the same
    file waits for it. Raises `DatabaseBusyError` after `timeout_s` seconds.
    """
    path = Path(db_path)
    if not path.exists():
        raise FileNotFoundError(f"DuckDB file not found: {path}; run `drf-batch score` first")
    connection = connect_with_retry(path, read_only=True, policy=LockPolicy(timeout_s=timeout_s))
    try:
        yield connection
    finally:
        connection.close()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ScoreStore:
    """Writer for one DuckDB file. Each method opens the file, does its work and closes it again."""

    def __init__(self, db_path: Path | str, *, lock_policy: LockPolicy = LockPolicy()) -> None:
        self.db_path = Path(db_path)
        self.lock_policy = lock_policy

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file read-write for one unit of work and close it, so readers can get in."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        connection = connect_with_retry(self.db_path, read_only=False, policy=self.lock_policy)
        try:
            yield connection
        finally:
            connection.close()

    def initialize(self) -> None:
        """Create the tables when they are missing."""
        with self.connection() as connection:
            for statement in SCHEMA_STATEMENTS:
                connection.execute(statement)

    def register_bundle(
        self,
        *,
        bundle_id: str,
        name: str,
        path: str,
        labels: Sequence[str],
        image_threshold: float | None,
        text_threshold: float | None,
        manifest: dict[str, Any],
    ) -> None:
        """Record a bundle, rejecting one whose labels differ from scores already in the file.

        Scores store probabilities in their bundle's label order, so mixing label sets in one file
        would make the `probs` column mean different things in different rows.
        """
        with self.connection() as connection:
            existing = connection.execute(
                """
                SELECT DISTINCT b.bundle_id, b.labels
                FROM bundles AS b
                WHERE EXISTS (SELECT 1 FROM scores AS s WHERE s.bundle_id = b.bundle_id)
                """
            ).fetchall()
            for other_id, other_labels in existing:
                if list(other_labels) != list(labels):
                    raise LabelMismatchError(
                        f"{self.db_path} already contains scores from bundle {other_id} with labels "
                        f"{list(other_labels)}, but bundle {bundle_id} has labels {list(labels)}. "
                        "Score into another file with --db, or use a bundle with the same labels "
                        "in the same order."
                    )
            connection.execute(
                """
                INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (bundle_id) DO NOTHING
                """,
                [
                    bundle_id,
                    name,
                    path,
                    list(labels),
                    image_threshold,
                    text_threshold,
                    json.dumps(manifest),
                ],
            )

    def start_run(
        self,
        *,
        run_id: str,
        bundle_id: str,
        bundle_name: str,
        bundle_path: str,
        input_path: str,
        engine: str,
        providers_requested: Sequence[str],
        providers_used: Sequence[str],
        labels: Sequence[str],
        drf_batch_version: str,
    ) -> None:
        """Insert a `runs` row with status 'running' and zero counts."""
        with self.connection() as connection:
            connection.execute(
                """
                INSERT INTO runs (run_id, bundle_id, bundle_name, bundle_path, input_path, engine,
                    status, started_at, rows_in, rows_scored, rows_rejected, rows_skipped,
                    providers_requested, providers_used, labels, drf_batch_version)
                VALUES (?, ?, ?, ?, ?, ?, 'running', ?, 0, 0, 0, 0, ?, ?, ?, ?)
                """,
                [
                    run_id,
                    bundle_id,
                    bundle_name,
                    bundle_path,
                    input_path,
                    engine,
                    _utc_now(),
                    list(providers_requested),
                    list(providers_used),
                    list(labels),
                    drf_batch_version,
                ],
            )

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        seconds: float,
        rows_skipped: int,
        error: str | None = None,
    ) -> None:
        """Set the final status, duration and throughput of a run.

        `rows_in` counts every row read, `rows_scored` and `rows_rejected` the rows this run added,
        and `rows_skipped` the rows an earlier run had already stored.
        """
        with self.connection() as connection:
            connection.execute(
                """
                UPDATE runs SET status = ?, finished_at = ?, seconds = ?, error = ?,
                    rows_skipped = ?, rows_in = rows_in + ?,
                    posts_per_second = CASE WHEN ? > 0
                        THEN (rows_scored + rows_rejected) / ? ELSE NULL END
                WHERE run_id = ?
                """,
                [status, _utc_now(), seconds, error, rows_skipped, rows_skipped, seconds, seconds, run_id],
            )

    def stored_row_numbers(self, *, bundle_id: str, input_path: str) -> np.ndarray:
        """Return the sorted row numbers of an input file already in scores or rejects for a bundle."""
        with self.connection() as connection:
            table = connection.execute(
                """
                SELECT row_number FROM scores WHERE bundle_id = ? AND input_path = ?
                UNION ALL
                SELECT row_number FROM rejects WHERE bundle_id = ? AND input_path = ?
                ORDER BY row_number
                """,
                [bundle_id, input_path, bundle_id, input_path],
            ).fetchnumpy()
        return np.asarray(table["row_number"], dtype=np.int64)

    def write_batch(self, scores: pa.Table, rejects: pa.Table, *, run_id: str) -> BatchWriteResult:
        """Write one batch of scores and rejects in a single transaction, idempotently.

        Rows already stored under the same (bundle_id, input_path, row_number) are left as they are.
        A score whose post_id the file already holds for the bundle from another input row becomes a
        `duplicate_post_id` reject, and so does every occurrence after the first within the batch.
        """
        with self.connection() as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
                result = self._write_batch(connection, scores, rejects, run_id=run_id)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return result

    def _write_batch(
        self,
        connection: duckdb.DuckDBPyConnection,
        scores: pa.Table,
        rejects: pa.Table,
        *,
        run_id: str,
    ) -> BatchWriteResult:
        connection.register("incoming_scores", scores.select(list(SCORE_COLUMNS)))
        connection.register("incoming_rejects", rejects.select(list(REJECT_COLUMNS)))

        # Rows whose input position is already stored in either table are left alone: this is
        # what makes a re-run after a crash, or of a finished run, add nothing twice.
        connection.execute(
            """
            CREATE OR REPLACE TEMP TABLE pending_scores AS
            SELECT i.*, row_number() OVER (PARTITION BY i.post_id ORDER BY i.row_number) AS occurrence
            FROM incoming_scores AS i
            WHERE NOT EXISTS (SELECT 1 FROM scores AS s WHERE s.bundle_id = i.bundle_id
                              AND s.input_path = i.input_path AND s.row_number = i.row_number)
              AND NOT EXISTS (SELECT 1 FROM rejects AS r WHERE r.bundle_id = i.bundle_id
                              AND r.input_path = i.input_path AND r.row_number = i.row_number)
            """
        )
        connection.execute(
            """
            CREATE OR REPLACE TEMP TABLE duplicate_scores AS
            SELECT p.*, s.input_path AS first_input_path, s.row_number AS first_row_number
            FROM pending_scores AS p
            LEFT JOIN scores AS s ON s.post_id = p.post_id AND s.bundle_id = p.bundle_id
            WHERE s.post_id IS NOT NULL OR p.occurrence > 1
            """
        )
        connection.execute(
            """
            INSERT INTO rejects
            SELECT d.post_id, d.bundle_id, ?, d.input_path, d.row_number, ?,
                'post_id ' || to_json(d.post_id)::VARCHAR || ' was already scored with this bundle from '
                    || coalesce(d.first_input_path || ' row ' || d.first_row_number::VARCHAR,
                                'an earlier row of this file')
                    || '; post_id must be unique',
                d.extra, d.scored_at
            FROM duplicate_scores AS d
            ON CONFLICT DO NOTHING
            """,
            [run_id, DUPLICATE_POST_ID],
        )
        duplicates = connection.execute("SELECT count(*) FROM duplicate_scores").fetchone()[0]

        column_list = ", ".join(SCORE_COLUMNS)
        selected = ", ".join(f"p.{name}" for name in SCORE_COLUMNS)
        scored = connection.execute(
            f"""
            INSERT INTO scores ({column_list})
            SELECT {selected} FROM pending_scores AS p
            WHERE p.occurrence = 1
              AND NOT EXISTS (SELECT 1 FROM duplicate_scores AS d
                              WHERE d.input_path = p.input_path AND d.row_number = p.row_number)
            ON CONFLICT DO NOTHING
            """
        ).fetchone()[0]

        rejected = connection.execute(
            f"""
            INSERT INTO rejects ({", ".join(REJECT_COLUMNS)})
            SELECT {", ".join(f"i.{name}" for name in REJECT_COLUMNS)} FROM incoming_rejects AS i
            WHERE NOT EXISTS (SELECT 1 FROM scores AS s WHERE s.bundle_id = i.bundle_id
                              AND s.input_path = i.input_path AND s.row_number = i.row_number)
            ON CONFLICT DO NOTHING
            """
        ).fetchone()[0]

        already_stored = scores.num_rows + rejects.num_rows - scored - rejected - duplicates
        connection.execute(
            """
            UPDATE runs SET rows_in = rows_in + ?, rows_scored = rows_scored + ?,
                rows_rejected = rows_rejected + ?
            WHERE run_id = ?
            """,
            [scored + rejected + duplicates, scored, rejected + duplicates, run_id],
        )
        connection.unregister("incoming_scores")
        connection.unregister("incoming_rejects")
        return BatchWriteResult(
            scored=scored,
            rejected=rejected + duplicates,
            duplicates=duplicates,
            already_stored=max(already_stored, 0),
        )
