"""Tests of the Ray engine: it must store exactly what the local engine stores, and resume the same way.

Tests that run Ray start a private local instance with 2 CPUs, bound to 127.0.0.1, and shut it down
at the end of the module. They are skipped when Ray Data is not installed.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drf_batch.scoring.inputs import InputFileError
from drf_batch.scoring.ray_engine import (
    RAY_EXTRA_INSTALL,
    READ_TASK_CPUS,
    RayEngineError,
    RayNotInstalledError,
    RayOptions,
    default_output_dir,
    import_ray,
    list_input_files,
    plan_cpus_per_actor,
    score_dump,
)
from drf_batch.scoring.runner import RunOptions, score_file
from drf_batch.storage import ScoreStore

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_POSTS = REPO_ROOT / "sample_data" / "posts.parquet"
SAMPLE_IMAGES = REPO_ROOT / "sample_data" / "images"

# Small batches so that each file spans several Ray blocks and both actors get work.
BATCH_SIZE = 8

VOLATILE_SCORE_COLUMNS = ("run_id", "scored_at")
VOLATILE_REJECT_COLUMNS = ("run_id", "rejected_at")


def _ray_available() -> bool:
    # local=True keeps the instance that ray_local starts on 127.0.0.1, whichever test imports Ray first.
    try:
        import_ray(local=True)
    except RayNotInstalledError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs on 127.0.0.1, shut down after the module's tests."""
    if not _ray_available():
        pytest.skip(f"Ray Data is not installed; install it with {RAY_EXTRA_INSTALL}")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:"), "Ray must listen on 127.0.0.1 only"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(default_bundle: Path) -> Any:
    """The session's exported bundle, loaded on the CPU as the driver of a Ray run loads it."""
    from drf_batch.bundle import load_bundle

    return load_bundle(default_bundle, providers="cpu")


# -- helpers ---------------------------------------------------------------------------------------


def _bad_rows() -> pa.Table:
    """Rows that exercise rejects, unreadable images and duplicates, plus a column of their own."""
    rows = [
        ("bad-001", "A text with an image that does not exist.", "no-such-image.jpg"),
        ("bad-002", None, "no-such-image.jpg"),
        (None, "A post without an id.", None),
        ("", "A post with an empty id.", None),
        ("bad-003", "   ", None),
        ("bad-004", "", None),
        ("bad-005", None, None),
        ("bad-006", "First of two rows with one id, at the end of the first batch.", None),
        ("demo-001", "The same post_id as the first sample post.", None),
        ("bad-006", "Second of two rows with one id.", None),
        ("bad-007", "An image path outside the image root.", "../../../etc/hostname"),
        ("bad-008", "An http image that is never fetched.", "http://127.0.0.1:9/x.jpg"),
        ("bad-009", "word " * 400, None),
        ("bad-010", "Emoji only 😀😀😀 and right-to-left שלום עולם", "cat.jpg"),
    ]
    return pa.table(
        {
            "post_id": pa.array([row[0] for row in rows], pa.string()),
            "text": pa.array([row[1] for row in rows], pa.string()),
            "image_path": pa.array([row[2] for row in rows], pa.string()),
            "campaign": pa.array([f"c{index % 3}" for index in range(len(rows))], pa.string()),
        }
    )


def _make_dump(folder: Path) -> Path:
    """Write a dump folder: the sample posts twice (second copy under new ids) and the bad rows."""
    folder.mkdir(parents=True, exist_ok=True)
    posts = pq.read_table(SAMPLE_POSTS)
    pq.write_table(posts, folder / "part-0.parquet")
    renamed = posts.set_column(
        posts.schema.get_field_index("post_id"),
        "post_id",
        pa.array([f"copy-{value}" for value in posts["post_id"].to_pylist()], pa.string()),
    )
    pq.write_table(renamed, folder / "part-1.parquet", row_group_size=10)
    pq.write_table(_bad_rows(), folder / "part-2.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


def _run_options() -> RunOptions:
    return RunOptions(batch_size=BATCH_SIZE, image_root=SAMPLE_IMAGES, inference_batch_size=4)


def _score_locally(dump: Path, bundle: Any, db_path: Path) -> None:
    store = ScoreStore(db_path)
    for path in list_input_files(dump):
        score_file(path, bundle, store, options=_run_options())


def _rows(db_path: Path, table: str, exclude: tuple[str, ...]) -> list[dict[str, Any]]:
    with duckdb.connect(str(db_path), read_only=True) as connection:
        relation = connection.sql(
            f"SELECT * EXCLUDE ({', '.join(exclude)}) FROM {table} ORDER BY input_path, row_number"
        )
        return relation.to_arrow_table().to_pylist()


def _assert_same_rows(local: list[dict[str, Any]], distributed: list[dict[str, Any]], table: str) -> None:
    assert len(distributed) == len(local), f"{table}: row counts differ"
    for local_row, ray_row in zip(local, distributed):
        assert ray_row == local_row, f"{table}: rows differ at {local_row['input_path']} row {local_row['row_number']}"


def _stored_positions(db_path: Path) -> list[tuple[str, int]]:
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute(
            """
            SELECT input_path, row_number FROM scores
            UNION ALL SELECT input_path, row_number FROM rejects
            ORDER BY 1, 2
            """
        ).fetchall()


def _input_positions(dump: Path) -> list[tuple[str, int]]:
    positions = []
    for path in list_input_files(dump):
        rows = pq.ParquetFile(path).metadata.num_rows
        positions.extend((str(path), row) for row in range(rows))
    return sorted(positions)


class _FailingStore(ScoreStore):
    """A store whose writes fail after a number of batches, as when the driver dies mid-run."""

    def __init__(self, db_path: Path, *, fail_after: int) -> None:
        super().__init__(db_path)
        self.fail_after = fail_after
        self.writes = 0

    def write_batch(self, scores: pa.Table, rejects: pa.Table, *, run_id: str) -> Any:
        if self.writes >= self.fail_after:
            raise RuntimeError("simulated driver failure")
        self.writes += 1
        return super().write_batch(scores, rejects, run_id=run_id)


# -- without a Ray instance ------------------------------------------------------------------------


def _hide_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import ray` fail, as it does where Ray is not installed."""
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for module in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", failing_import)


def test_import_ray_missing_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_ray(monkeypatch)

    with pytest.raises(RayNotInstalledError) as raised:
        import_ray()
    assert RAY_EXTRA_INSTALL in str(raised.value)
    assert isinstance(raised.value, ImportError)


def test_score_command_ray_missing_names_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from drf_batch.cli import app

    _hide_ray(monkeypatch)
    db_path = tmp_path / "scores.duckdb"

    result = CliRunner().invoke(app, ["score", str(SAMPLE_POSTS), "--engine", "ray", "--db", str(db_path)])

    assert result.exit_code == 2
    assert RAY_EXTRA_INSTALL in result.output
    assert not db_path.exists()


def test_list_input_files_sorted_skips_markers(tmp_path: Path) -> None:
    dump = _make_dump(tmp_path / "dump")
    (dump / "nested").mkdir()
    pq.write_table(_bad_rows(), dump / "nested" / "part-3.parquet")
    pq.write_table(_bad_rows(), dump / ".hidden.parquet")
    (dump / "notes.txt").write_text("not a posts file")

    files = list_input_files(dump)

    assert [path.relative_to(dump.resolve()).as_posix() for path in files] == [
        "nested/part-3.parquet",
        "part-0.parquet",
        "part-1.parquet",
        "part-2.parquet",
    ]
    assert list_input_files(dump / "part-1.parquet") == [(dump / "part-1.parquet").resolve()]


def test_list_input_files_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="contains no Parquet files"):
        list_input_files(tmp_path)
    with pytest.raises(InputFileError, match="input not found"):
        list_input_files(tmp_path / "missing")


def test_default_output_dir_next_to_db(tmp_path: Path) -> None:
    assert default_output_dir(tmp_path / "scores.duckdb") == tmp_path / "scores-parquet"


def test_ray_options_invalid_values() -> None:
    with pytest.raises(ValueError, match="num_actors"):
        RayOptions(num_actors=0)
    with pytest.raises(ValueError, match="gpus_per_actor"):
        RayOptions(gpus_per_actor=-1)
    with pytest.raises(ValueError, match="cpus_per_actor"):
        RayOptions(cpus_per_actor=0)
    with pytest.raises(ValueError, match="onnx_threads"):
        RayOptions(onnx_threads=0)
    with pytest.raises(ValueError, match="merge_rows"):
        RayOptions(merge_rows=0)


def test_plan_cpus_per_actor_cases() -> None:
    assert plan_cpus_per_actor(RayOptions(num_actors=2), 8) == 1.0
    shared = plan_cpus_per_actor(RayOptions(num_actors=2), 2)
    assert shared * 2 + READ_TASK_CPUS <= 2
    assert shared > 0.5
    assert plan_cpus_per_actor(RayOptions(num_actors=2, cpus_per_actor=3), 8) == 3
    with pytest.raises(RayEngineError, match="Lower --num-actors or --cpus-per-actor"):
        plan_cpus_per_actor(RayOptions(num_actors=4, cpus_per_actor=2), 8)
    with pytest.raises(RayEngineError, match="too few"):
        plan_cpus_per_actor(RayOptions(num_actors=100), 2)


def _input_file(path: Path, *, stored: list[int], bytes_per_row: float = 10.0) -> Any:
    from drf_batch.scoring.ray_workers import InputFile

    return InputFile(
        path=str(path),
        num_rows=pq.ParquetFile(path).metadata.num_rows,
        size_bytes=path.stat().st_size,
        bytes_per_row=bytes_per_row,
        stored_row_numbers=np.array(stored, dtype=np.int64),
    )


def test_datasource_numbers_rows_per_file(tmp_path: Path) -> None:
    if not _ray_available():
        pytest.skip(f"Ray Data is not installed; install it with {RAY_EXTRA_INSTALL}")
    from drf_batch.scoring.core import ROW_NUMBER_COLUMN
    from drf_batch.scoring.ray_workers import (
        BATCH_ROWS_COLUMN,
        BATCH_START_COLUMN,
        INPUT_PATH_COLUMN,
        PostsDatasource,
        plan_row_ranges,
        split_batches,
    )

    path = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"post_id": [f"p{index}" for index in range(25)]}), path, row_group_size=7)
    item = _input_file(path, stored=[0, 1, 2, 3, 4, 5, 6, 7, 9])

    ranges = plan_row_ranges(item, batch_size=BATCH_SIZE, num_actors=1)
    datasource = PostsDatasource(ranges, batch_size=BATCH_SIZE)
    tasks = datasource.get_read_tasks(parallelism=1)
    blocks = [block for task in tasks for block in task()]

    # Rows 0-7 form a fully stored batch, so no task reads them.
    assert [(part.start, part.stop) for part in ranges] == [(8, 16), (16, 24), (24, 25)]
    assert len(tasks) == 3
    table = pa.concat_tables(blocks)
    assert table[ROW_NUMBER_COLUMN].to_pylist() == [8, *range(10, 25)]
    assert table["post_id"].to_pylist() == [f"p{index}" for index in [8, *range(10, 25)]]
    assert set(table[INPUT_PATH_COLUMN].to_pylist()) == {str(path)}
    assert [block[BATCH_START_COLUMN][0].as_py() for block in blocks] == [8, 16, 24]
    assert [block[BATCH_ROWS_COLUMN][0].as_py() for block in blocks] == [8, 8, 1]

    parts = list(split_batches(table))
    assert [(part.batch_start, part.batch_rows, part.table.num_rows) for part in parts] == [
        (8, 8, 7),
        (16, 8, 8),
        (24, 1, 1),
    ]


def test_plan_row_ranges_align_to_batches(tmp_path: Path) -> None:
    if not _ray_available():
        pytest.skip(f"Ray Data is not installed; install it with {RAY_EXTRA_INSTALL}")
    from drf_batch.scoring.core import ROW_NUMBER_COLUMN
    from drf_batch.scoring.ray_workers import BATCH_START_COLUMN, plan_row_ranges, read_row_range

    path = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"post_id": [f"p{index}" for index in range(100)]}), path, row_group_size=30)
    item = _input_file(path, stored=[])

    # 13 batches over 4 tasks per actor: 4 batches (32 rows) per task.
    ranges = plan_row_ranges(item, batch_size=BATCH_SIZE, num_actors=1)
    blocks = [block for part in ranges for block in read_row_range(part, batch_size=BATCH_SIZE)]
    # A row needing a whole task's memory budget gets one batch per task.
    huge_rows = plan_row_ranges(_input_file(path, stored=[], bytes_per_row=1e9), batch_size=BATCH_SIZE, num_actors=1)

    assert [(part.start, part.stop) for part in ranges] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert pa.concat_tables(blocks)[ROW_NUMBER_COLUMN].to_pylist() == list(range(100))
    assert [block[BATCH_START_COLUMN][0].as_py() for block in blocks] == list(range(0, 100, BATCH_SIZE))
    assert [block.num_rows for block in blocks] == [BATCH_SIZE] * 12 + [4]
    assert [part.stop - part.start for part in huge_rows] == [BATCH_SIZE] * 12 + [4]


# -- with a local Ray instance ---------------------------------------------------------------------


@pytest.mark.slow
def test_ray_engine_equals_local_engine(tmp_path: Path, bundle: Any, ray_local: Any) -> None:
    dump = _make_dump(tmp_path / "dump")
    local_db = tmp_path / "local.duckdb"
    ray_db = tmp_path / "ray.duckdb"
    _score_locally(dump, bundle, local_db)

    summaries = score_dump(
        dump, bundle, ScoreStore(ray_db), options=_run_options(), ray_options=RayOptions(num_actors=2)
    )

    _assert_same_rows(
        _rows(local_db, "scores", VOLATILE_SCORE_COLUMNS), _rows(ray_db, "scores", VOLATILE_SCORE_COLUMNS), "scores"
    )
    _assert_same_rows(
        _rows(local_db, "rejects", VOLATILE_REJECT_COLUMNS),
        _rows(ray_db, "rejects", VOLATILE_REJECT_COLUMNS),
        "rejects",
    )
    assert _stored_positions(ray_db) == _input_positions(dump)
    reasons = {row["reason_code"] for row in _rows(ray_db, "rejects", VOLATILE_REJECT_COLUMNS)}
    assert {"missing_post_id", "no_modality", "duplicate_post_id"} <= reasons

    assert [summary.status for summary in summaries] == ["finished"] * 3
    with duckdb.connect(str(ray_db), read_only=True) as connection:
        runs = connection.execute(
            "SELECT engine, status, rows_in, rows_scored + rows_rejected, providers_used FROM runs ORDER BY input_path"
        ).fetchall()
    assert [run[:2] for run in runs] == [("ray", "finished")] * 3
    assert [run[2] for run in runs] == [22, 22, 14]
    assert [run[3] for run in runs] == [22, 22, 14]
    assert all("CPUExecutionProvider" in run[4] for run in runs)

    partitions = default_output_dir(ray_db)
    scores_written = pa.concat_tables([pq.read_table(path) for path in sorted(partitions.rglob("scores/*/*.parquet"))])
    rejects_written = pa.concat_tables([pq.read_table(path) for path in sorted(partitions.rglob("rejects/*/*.parquet"))])
    assert scores_written.num_rows + rejects_written.num_rows == len(_input_positions(dump))


@pytest.mark.slow
def test_ray_engine_grouped_merge_same_rows(tmp_path: Path, bundle: Any, ray_local: Any) -> None:
    dump = _make_dump(tmp_path / "dump")
    local_db = tmp_path / "local.duckdb"
    ray_db = tmp_path / "ray.duckdb"
    _score_locally(dump, bundle, local_db)

    score_dump(
        dump, bundle, ScoreStore(ray_db), options=_run_options(), ray_options=RayOptions(num_actors=2, merge_rows=4096)
    )

    _assert_same_rows(
        _rows(local_db, "scores", VOLATILE_SCORE_COLUMNS), _rows(ray_db, "scores", VOLATILE_SCORE_COLUMNS), "scores"
    )
    # Only the wording of a duplicate's reason may differ, when both rows share a transaction.
    without_reason = (*VOLATILE_REJECT_COLUMNS, "reason")
    _assert_same_rows(_rows(local_db, "rejects", without_reason), _rows(ray_db, "rejects", without_reason), "rejects")


@pytest.mark.slow
def test_ray_engine_rerun_after_failure(tmp_path: Path, bundle: Any, ray_local: Any) -> None:
    dump = _make_dump(tmp_path / "dump")
    local_db = tmp_path / "local.duckdb"
    ray_db = tmp_path / "ray.duckdb"
    _score_locally(dump, bundle, local_db)

    with pytest.raises(RuntimeError, match="simulated driver failure"):
        score_dump(
            dump,
            bundle,
            _FailingStore(ray_db, fail_after=3),
            options=_run_options(),
            ray_options=RayOptions(num_actors=2, merge_rows=BATCH_SIZE),
        )
    partial = _stored_positions(ray_db)
    assert 0 < len(partial) < len(_input_positions(dump))
    with duckdb.connect(str(ray_db), read_only=True) as connection:
        statuses = connection.execute("SELECT DISTINCT status FROM runs").fetchall()
    assert statuses == [("failed",)]

    summaries = score_dump(
        dump, bundle, ScoreStore(ray_db), options=_run_options(), ray_options=RayOptions(num_actors=2)
    )

    assert sum(summary.rows_skipped for summary in summaries) == len(partial)
    assert _stored_positions(ray_db) == _input_positions(dump)
    _assert_same_rows(
        _rows(local_db, "scores", VOLATILE_SCORE_COLUMNS), _rows(ray_db, "scores", VOLATILE_SCORE_COLUMNS), "scores"
    )
    _assert_same_rows(
        _rows(local_db, "rejects", VOLATILE_REJECT_COLUMNS),
        _rows(ray_db, "rejects", VOLATILE_REJECT_COLUMNS),
        "rejects",
    )
    # The batch whose database write failed was written to Parquet and is replaced, not repeated.
    partitions = default_output_dir(ray_db)
    written = pa.concat_tables(
        [
            pq.read_table(path, columns=["input_path", "row_number"])
            for path in sorted(partitions.rglob("*.parquet"))
        ]
    )
    positions = list(zip(written["input_path"].to_pylist(), written["row_number"].to_pylist()))
    assert len(positions) == len(set(positions))
    assert sorted(positions) == _input_positions(dump)


@pytest.mark.slow
def test_ray_engine_rerun_finished_adds_nothing(tmp_path: Path, bundle: Any, ray_local: Any) -> None:
    dump = _make_dump(tmp_path / "dump")
    ray_db = tmp_path / "ray.duckdb"
    score_dump(dump, bundle, ScoreStore(ray_db), options=_run_options(), ray_options=RayOptions())
    before = _stored_positions(ray_db)

    summaries = score_dump(dump, bundle, ScoreStore(ray_db), options=_run_options(), ray_options=RayOptions())

    assert _stored_positions(ray_db) == before
    assert [summary.rows_scored + summary.rows_rejected for summary in summaries] == [0, 0, 0]
    assert [summary.rows_skipped for summary in summaries] == [22, 22, 14]


@pytest.mark.slow
def test_ray_engine_gpus_beyond_cluster_raise(tmp_path: Path, bundle: Any, ray_local: Any) -> None:
    dump = _make_dump(tmp_path / "dump")
    ray_db = tmp_path / "ray.duckdb"

    with pytest.raises(RayEngineError, match="GPUs"):
        score_dump(
            dump,
            bundle,
            ScoreStore(ray_db),
            options=_run_options(),
            ray_options=RayOptions(gpus_per_actor=1),
        )
    with duckdb.connect(str(ray_db), read_only=True) as connection:
        statuses = connection.execute("SELECT DISTINCT status FROM runs").fetchall()
        stored = connection.execute("SELECT count(*) FROM scores").fetchone()
    assert statuses == [("failed",)]
    assert stored == (0,)


@pytest.mark.slow
def test_score_command_ray_folder(tmp_path: Path, default_bundle: Path, ray_local: Any) -> None:
    from typer.testing import CliRunner

    from drf_batch.cli import app

    dump = _make_dump(tmp_path / "dump")
    db_path = tmp_path / "scores.duckdb"
    arguments = [
        "score", str(dump), "--engine", "ray", "--num-actors", "2",
        "--bundle", str(default_bundle), "--image-root", str(SAMPLE_IMAGES),
        "--db", str(db_path), "--batch-size", str(BATCH_SIZE), "--providers", "cpu", "--no-progress",
    ]  # fmt: skip

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    assert result.output.count(" finished: ") == 3
    assert _stored_positions(db_path) == _input_positions(dump)
    assert default_output_dir(db_path).is_dir()
