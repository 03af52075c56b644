"""DuckDB storage: schema, idempotent batch writes, duplicates, label checks and file locking."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from drf_batch.scoring.results import REJECTS_SCHEMA, SCORES_SCHEMA, rejects_table
from drf_batch.storage import (
    DatabaseBusyError,
    LabelMismatchError,
    LockPolicy,
    ScoreStore,
    open_reader,
)

LABELS = ["negative", "neutral", "positive"]
NOW = datetime(2026, 1, 2, 3, 4, 5)


def _scores(post_ids: list[str], row_numbers: list[int], *, input_path: str = "/in.parquet") -> pa.Table:
    count = len(post_ids)
    columns = {field.name: pa.nulls(count, field.type) for field in SCORES_SCHEMA}
    columns.update(
        post_id=pa.array(post_ids, pa.string()),
        bundle_id=pa.array(["b1"] * count, pa.string()),
        run_id=pa.array(["r1"] * count, pa.string()),
        input_path=pa.array([input_path] * count, pa.string()),
        row_number=pa.array(row_numbers, pa.int64()),
        graph=pa.array(["paired"] * count, pa.string()),
        label=pa.array(["positive"] * count, pa.string()),
        probs=pa.array([[0.1, 0.2, 0.7]] * count, pa.list_(pa.float64())),
        extra=pa.array(['{"lang": "en"}'] * count, pa.string()),
        scored_at=pa.array([NOW] * count, pa.timestamp("us")),
    )
    return pa.table(columns, schema=SCORES_SCHEMA)


def _rejects(row_numbers: list[int], *, input_path: str = "/in.parquet") -> pa.Table:
    count = len(row_numbers)
    return rejects_table(
        post_ids=[None] * count,
        bundle_id="b1",
        run_id="r1",
        input_path=input_path,
        row_numbers=row_numbers,
        reason_codes=["no_modality"] * count,
        reasons=["neither text nor image"] * count,
        extras=[None] * count,
        rejected_at=NOW,
    )


@pytest.fixture()
def store(tmp_path: Path) -> ScoreStore:
    store = ScoreStore(tmp_path / "scores.duckdb")
    store.initialize()
    store.register_bundle(
        bundle_id="b1",
        name="test",
        path="/bundle",
        labels=LABELS,
        image_threshold=-10.0,
        text_threshold=-12.0,
        manifest={"name": "test"},
    )
    store.start_run(
        run_id="r1",
        bundle_id="b1",
        bundle_name="test",
        bundle_path="/bundle",
        input_path="/in.parquet",
        engine="local",
        providers_requested=["CPUExecutionProvider"],
        providers_used=["CPUExecutionProvider"],
        labels=LABELS,
        drf_batch_version="0",
    )
    return store


def _count(store: ScoreStore, table: str) -> int:
    with open_reader(store.db_path) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_schema_creates_four_tables(store: ScoreStore) -> None:
    with open_reader(store.db_path) as connection:
        tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
        score_columns = [row[0] for row in connection.execute("DESCRIBE scores").fetchall()]
    assert {"runs", "bundles", "scores", "rejects"} <= tables
    assert score_columns == list(SCORES_SCHEMA.names)


def test_write_batch_stores_rows(store: ScoreStore) -> None:
    result = store.write_batch(_scores(["a", "b"], [0, 1]), _rejects([2]), run_id="r1")
    assert result.scored == 2
    assert result.rejected == 1
    assert _count(store, "scores") == 2
    assert _count(store, "rejects") == 1
    with open_reader(store.db_path) as connection:
        probs, extra = connection.execute("SELECT probs, extra FROM scores WHERE post_id = 'a'").fetchone()
        rows_in = connection.execute("SELECT rows_in FROM runs WHERE run_id = 'r1'").fetchone()[0]
    assert probs == [0.1, 0.2, 0.7]
    assert extra == '{"lang": "en"}'
    assert rows_in == 3


def test_write_batch_twice_is_idempotent(store: ScoreStore) -> None:
    store.write_batch(_scores(["a", "b"], [0, 1]), _rejects([2]), run_id="r1")
    second = store.write_batch(_scores(["a", "b"], [0, 1]), _rejects([2]), run_id="r1")
    assert second.scored == 0
    assert second.rejected == 0
    assert second.already_stored == 3
    assert _count(store, "scores") == 2
    assert _count(store, "rejects") == 1


def test_duplicate_post_id_in_batch_rejected(store: ScoreStore) -> None:
    result = store.write_batch(_scores(["a", "a", "b"], [0, 1, 2]), _rejects([]), run_id="r1")
    assert result.scored == 2
    assert result.duplicates == 1
    with open_reader(store.db_path) as connection:
        scored_row = connection.execute("SELECT row_number FROM scores WHERE post_id = 'a'").fetchone()[0]
        reject = connection.execute("SELECT row_number, reason_code, reason FROM rejects").fetchone()
    assert scored_row == 0
    assert reject[0] == 1
    assert reject[1] == "duplicate_post_id"
    assert "already scored" in reject[2]


def test_duplicate_post_id_across_batches_rejected(store: ScoreStore) -> None:
    store.write_batch(_scores(["a"], [0]), _rejects([]), run_id="r1")
    result = store.write_batch(_scores(["a"], [7]), _rejects([]), run_id="r1")
    assert result.duplicates == 1
    with open_reader(store.db_path) as connection:
        reason = connection.execute("SELECT reason FROM rejects WHERE row_number = 7").fetchone()[0]
    assert "/in.parquet row 0" in reason
    # Writing the duplicate again adds nothing: its row is already stored as a reject.
    again = store.write_batch(_scores(["a"], [7]), _rejects([]), run_id="r1")
    assert again.already_stored == 1
    assert _count(store, "rejects") == 1


def test_stored_row_numbers_covers_both_tables(store: ScoreStore) -> None:
    store.write_batch(_scores(["a", "b"], [0, 3]), _rejects([1]), run_id="r1")
    stored = store.stored_row_numbers(bundle_id="b1", input_path="/in.parquet")
    assert stored.tolist() == [0, 1, 3]
    assert store.stored_row_numbers(bundle_id="b1", input_path="/other.parquet").tolist() == []


def test_register_bundle_label_mismatch_raises(store: ScoreStore) -> None:
    store.write_batch(_scores(["a"], [0]), _rejects([]), run_id="r1")
    with pytest.raises(LabelMismatchError, match="negative"):
        store.register_bundle(
            bundle_id="b2",
            name="other",
            path="/other",
            labels=["positive", "negative"],
            image_threshold=None,
            text_threshold=None,
            manifest={},
        )


def test_finish_run_records_throughput(store: ScoreStore) -> None:
    store.write_batch(_scores(["a", "b"], [0, 1]), _rejects([]), run_id="r1")
    store.finish_run("r1", status="finished", seconds=2.0, rows_skipped=5)
    with open_reader(store.db_path) as connection:
        status, rows_in, skipped, rate = connection.execute(
            "SELECT status, rows_in, rows_skipped, posts_per_second FROM runs"
        ).fetchone()
    assert status == "finished"
    assert rows_in == 7
    assert skipped == 5
    assert rate == pytest.approx(1.0)


def test_empty_batch_writes_nothing(store: ScoreStore) -> None:
    result = store.write_batch(SCORES_SCHEMA.empty_table(), REJECTS_SCHEMA.empty_table(), run_id="r1")
    assert result.scored == 0
    assert result.rejected == 0


_HOLD_READER = textwrap.dedent(
    """
    import sys, time, duckdb
    connection = duckdb.connect(sys.argv[1], read_only=True)
    connection.execute("SELECT count(*) FROM scores").fetchone()
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.close()
    """
)


def _start_reader(db_path: Path, hold_s: float) -> subprocess.Popen[str]:
    reader = subprocess.Popen(
        [sys.executable, "-c", _HOLD_READER, str(db_path), str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "open"
    return reader


def test_writer_waits_for_reader_process(store: ScoreStore, caplog: pytest.LogCaptureFixture) -> None:
    reader = _start_reader(store.db_path, 1.5)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="drf_batch.storage"):
        store.write_batch(_scores(["a"], [0]), _rejects([]), run_id="r1")
    waited = time.monotonic() - started
    reader.wait(timeout=10)
    assert waited >= 0.5
    assert _count(store, "scores") == 1
    assert any("is locked by" in record.message and "PID" in record.message for record in caplog.records)


def test_writer_lock_timeout_message(tmp_path: Path, store: ScoreStore) -> None:
    reader = _start_reader(store.db_path, 3.0)
    impatient = ScoreStore(store.db_path, lock_policy=LockPolicy(timeout_s=0.3))
    try:
        with pytest.raises(DatabaseBusyError, match="held its lock"):
            impatient.write_batch(_scores(["a"], [0]), _rejects([]), run_id="r1")
    finally:
        reader.wait(timeout=10)


def test_reader_waits_for_writer_batch(store: ScoreStore) -> None:
    """A reader opened while a batch transaction is open gets in once the batch is committed."""
    holding = threading.Event()
    release = threading.Event()

    def hold_write_lock() -> None:
        with store.connection():
            holding.set()
            release.wait(timeout=10)

    writer = threading.Thread(target=hold_write_lock)
    writer.start()
    holding.wait(timeout=10)
    # The lock is per process, so the waiting reader must be another process.
    probe = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from drf_batch.storage import open_reader\n"
            "with open_reader(sys.argv[1], timeout_s=20) as c: print(c.execute('SELECT count(*) FROM runs').fetchone()[0])",
            str(store.db_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert probe.poll() is None
    release.set()
    writer.join(timeout=10)
    output, errors = probe.communicate(timeout=30)
    assert probe.returncode == 0, errors
    assert output.strip() == "1"


def test_open_reader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="drf-batch score"):
        with open_reader(tmp_path / "absent.duckdb"):
            pass


def test_duckdb_read_only_blocks_writer(store: ScoreStore) -> None:
    """Guard for the locking behaviour the store is built around (duckdb 2.0)."""
    reader = _start_reader(store.db_path, 1.0)
    try:
        with pytest.raises(duckdb.IOException, match="Could not set lock"):
            duckdb.connect(str(store.db_path)).close()
    finally:
        reader.wait(timeout=10)
