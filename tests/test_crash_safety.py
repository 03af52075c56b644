"""Crash safety: SIGKILL a scoring process mid-run, run it again, and check every row is stored once.

Also checks that readers on the same DuckDB file, in other processes, never make a run fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import catalogue_cases as cases
from drf_batch.storage import open_reader

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SAMPLE_DATA = REPO_ROOT / "sample_data"

# Runs the real local runner with the fake bundle in its own process, one line per committed batch.
_FAKE_RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from scoring_fakes import FakeBundle
    from drf_batch.scoring.runner import RunOptions, score_file
    from drf_batch.storage import ScoreStore

    def report(processed, skipped):
        print(f"batch {processed} {skipped}", flush=True)

    options = RunOptions(batch_size=10, image_root=Path(sys.argv[4]), pause_after_batch_s=float(sys.argv[5]))
    summary = score_file(Path(sys.argv[2]), FakeBundle(), ScoreStore(Path(sys.argv[3])), options=options, progress=report)
    print(f"done {summary.rows_scored} {summary.rows_rejected} {summary.rows_skipped}", flush=True)
    """
)


def _posts_with_problems(path: Path, root: Path, rows: int) -> Path:
    """Posts that cover every outcome: paired, text only, image only, unreadable, duplicates, rejects."""
    root.mkdir(exist_ok=True)
    (root / "photo.png").write_bytes(cases.png_bytes(cases.photo()))
    (root / "broken.jpg").write_bytes(cases.truncated_jpeg())
    post_ids, texts, images = [], [], []
    for index in range(rows):
        kind = index % 6
        post_ids.append(f"post-{index // 2}" if kind == 5 else f"post-{index}")
        texts.append(None if kind in (2, 4) else f"caption number {index} with words")
        images.append({0: "photo.png", 1: None, 2: "photo.png", 3: "broken.jpg", 4: None, 5: "photo.png"}[kind])
    pq.write_table(pa.table({"post_id": post_ids, "text": texts, "image_path": images}), path)
    return path


def _stored_counts(db_path: Path) -> dict[str, int]:
    with open_reader(db_path, timeout_s=60) as connection:
        return {
            "scores": connection.execute("SELECT count(*) FROM scores").fetchone()[0],
            "rejects": connection.execute("SELECT count(*) FROM rejects").fetchone()[0],
            "distinct_rows": connection.execute(
                """
                SELECT count(DISTINCT row_number) FROM (
                    SELECT row_number FROM scores UNION ALL SELECT row_number FROM rejects)
                """
            ).fetchone()[0],
            "overlap": connection.execute(
                "SELECT count(*) FROM scores s JOIN rejects r USING (bundle_id, input_path, row_number)"
            ).fetchone()[0],
            "duplicate_posts": connection.execute(
                "SELECT count(*) FROM (SELECT post_id FROM scores GROUP BY post_id, bundle_id HAVING count(*) > 1)"
            ).fetchone()[0],
        }


def _assert_every_row_once(db_path: Path, rows: int) -> None:
    counts = _stored_counts(db_path)
    assert counts["scores"] + counts["rejects"] == rows, counts
    assert counts["distinct_rows"] == rows, counts
    assert counts["overlap"] == 0
    assert counts["duplicate_posts"] == 0


def _start_fake_run(posts: Path, db_path: Path, root: Path, pause_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _FAKE_RUNNER, str(TESTS_DIR), str(posts), str(db_path), str(root), str(pause_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def _kill_after_batches(process: subprocess.Popen[str], batches: int, extra_delay_s: float) -> None:
    assert process.stdout is not None
    seen = 0
    while seen < batches:
        line = process.stdout.readline()
        assert line, f"runner ended early: {process.stderr.read() if process.stderr else ''}"
        if line.startswith("batch"):
            seen += 1
    time.sleep(extra_delay_s)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kill_delay_s", [0.0, 0.05, 0.13])
def test_sigkill_then_rerun_stores_every_row_once(tmp_path: Path, kill_delay_s: float) -> None:
    rows = 120
    root = tmp_path / "images"
    posts = _posts_with_problems(tmp_path / "posts.parquet", root, rows)
    db_path = tmp_path / "scores.duckdb"

    # A short pause after each batch lets the kill land before, during or after a batch write.
    first = _start_fake_run(posts, db_path, root, pause_s=0.1)
    _kill_after_batches(first, batches=3, extra_delay_s=kill_delay_s)
    partial = _stored_counts(db_path)
    assert 30 <= partial["scores"] + partial["rejects"] < rows

    second = _start_fake_run(posts, db_path, root, pause_s=0.0)
    output, errors = second.communicate(timeout=120)
    assert second.returncode == 0, errors
    assert output.strip().splitlines()[-1].startswith("done")
    _assert_every_row_once(db_path, rows)
    with open_reader(db_path) as connection:
        statuses = sorted(row[0] for row in connection.execute("SELECT status FROM runs").fetchall())
        reasons = dict(connection.execute("SELECT reason_code, count(*) FROM rejects GROUP BY 1").fetchall())
    # The killed run never reached its end, so it stays 'running'.
    assert statuses == ["finished", "running"]
    # Every twelfth row repeats the post_id of an earlier row, and every sixth row has no modality.
    assert reasons["duplicate_post_id"] == rows // 12
    assert reasons["no_modality"] == rows // 6


def test_rerun_of_finished_run_adds_nothing(tmp_path: Path) -> None:
    rows = 60
    root = tmp_path / "images"
    posts = _posts_with_problems(tmp_path / "posts.parquet", root, rows)
    db_path = tmp_path / "scores.duckdb"
    for attempt in range(2):
        process = _start_fake_run(posts, db_path, root, pause_s=0.0)
        output, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    scored, rejected, skipped = (int(value) for value in output.strip().splitlines()[-1].split()[1:])
    assert (scored, rejected, skipped) == (0, 0, rows)
    _assert_every_row_once(db_path, rows)


_HOLDING_READER = textwrap.dedent(
    """
    import sys, time
    from drf_batch.storage import open_reader
    deadline = time.monotonic() + float(sys.argv[2])
    reads = 0
    while time.monotonic() < deadline:
        with open_reader(sys.argv[1], timeout_s=60) as connection:
            scores = connection.execute("SELECT count(*) FROM scores").fetchone()[0]
            rejects = connection.execute("SELECT count(*) FROM rejects").fetchone()[0]
            rows_in = connection.execute("SELECT coalesce(sum(rows_in), 0) FROM runs").fetchone()[0]
            # Runs counters and rows change in the same transaction, so a reader sees them agree.
            assert scores + rejects == rows_in, (scores, rejects, rows_in)
            time.sleep(0.2)
        reads += 1
        time.sleep(0.05)
    print(reads, flush=True)
    """
)


def test_readers_during_run_never_fail_it(tmp_path: Path) -> None:
    rows = 120
    root = tmp_path / "images"
    posts = _posts_with_problems(tmp_path / "posts.parquet", root, rows)
    db_path = tmp_path / "scores.duckdb"
    writer = _start_fake_run(posts, db_path, root, pause_s=0.05)
    assert writer.stdout is not None
    assert writer.stdout.readline().startswith("batch")
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDING_READER, str(db_path), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        for _ in range(2)
    ]
    output, errors = writer.communicate(timeout=180)
    assert writer.returncode == 0, errors
    for reader in readers:
        reads, reader_errors = reader.communicate(timeout=60)
        assert reader.returncode == 0, reader_errors
        assert int(reads) >= 1
    _assert_every_row_once(db_path, rows)


def _default_bundle(request: pytest.FixtureRequest) -> object:
    try:
        return request.getfixturevalue("default_bundle")
    except pytest.FixtureLookupError:
        pytest.skip("the default_bundle fixture (a real exported bundle) is not defined in conftest.py")


def test_cli_sigkill_then_rerun(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The real `drf-batch score` command with the real default bundle, killed and run again."""
    default_bundle = _default_bundle(request)
    sample = pq.read_table(SAMPLE_DATA / "posts.parquet")
    copies = 4
    repeated = pa.concat_tables([sample] * copies)
    post_ids = [f"{post_id}-{index // sample.num_rows}" for index, post_id in enumerate(repeated.column("post_id").to_pylist())]
    repeated = repeated.set_column(0, "post_id", pa.array(post_ids))
    posts = tmp_path / "posts.parquet"
    pq.write_table(repeated, posts)
    db_path = tmp_path / "scores.duckdb"
    command = [
        str(Path(sys.executable).parent / "drf-batch"),
        "score",
        str(posts),
        "--bundle",
        str(default_bundle),
        "--db",
        str(db_path),
        "--image-root",
        str(SAMPLE_DATA / "images"),
        "--batch-size",
        "8",
        "--providers",
        "cpu",
        "--no-progress",
    ]
    first = subprocess.Popen([*command, "--pause-after-batch", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if db_path.exists():
            counts = _stored_counts(db_path)
            if counts["scores"] + counts["rejects"] >= 16:
                break
        assert first.poll() is None, first.communicate()[1]
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    partial = _stored_counts(db_path)
    assert partial["scores"] + partial["rejects"] < repeated.num_rows

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "already stored:" in second.stdout
    _assert_every_row_once(db_path, repeated.num_rows)
