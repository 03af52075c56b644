"""The local scoring runner and the `drf-batch score` command, with a fake bundle and real DuckDB."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import catalogue_cases as cases
from drf_batch.cli import app
from drf_batch.scoring.runner import RunOptions, score_file
from drf_batch.storage import ScoreStore, open_reader
from scoring_fakes import FakeBundle

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def _mixed_posts(path: Path, rows: int) -> Path:
    texts = [None if index % 4 == 3 else f"post text {index}" for index in range(rows)]
    images = ["photo.png" if index % 2 == 0 else None for index in range(rows)]
    pq.write_table(pa.table({"post_id": [f"p{index}" for index in range(rows)], "text": texts, "image_path": images}), path)
    (path.parent / "photo.png").write_bytes(cases.png_bytes(cases.photo()))
    return path


def test_summary_counts_match_database(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 40)
    store = ScoreStore(tmp_path / "scores.duckdb")
    summary = score_file(posts, FakeBundle(), store, options=RunOptions(batch_size=16))
    assert summary.status == "finished"
    assert summary.rows_in == 40
    assert summary.rows_scored == 30
    assert summary.rows_rejected == 10
    assert summary.rejected_by_reason == {"no_modality": 10}
    assert summary.graphs == {"paired": 20, "text_only": 10}
    assert summary.image_states == {"ok": 20, "missing": 10}
    assert summary.providers_used == ["CPUExecutionProvider"]
    with open_reader(store.db_path) as connection:
        run = connection.execute("SELECT status, rows_in, rows_scored, rows_rejected, engine FROM runs").fetchone()
        bundle = connection.execute("SELECT bundle_id, labels, image_threshold FROM bundles").fetchone()
    assert run == ("finished", 40, 30, 10, "local")
    assert bundle == ("fakebundle000001", ["negative", "neutral", "positive"], -3.0)


def test_non_finite_extras_file_finishes(tmp_path: Path) -> None:
    posts = tmp_path / "posts.parquet"
    values = [float("nan"), float("inf"), float("-inf"), 0.25]
    pq.write_table(pa.table({"post_id": ["a", "b", "c", "d"], "text": ["some words"] * 4, "ratio": values}), posts)
    store = ScoreStore(tmp_path / "scores.duckdb")
    summary = score_file(posts, FakeBundle(), store, options=RunOptions(batch_size=2))
    assert summary.status == "finished"
    assert summary.rows_scored == 4
    with open_reader(store.db_path) as connection:
        extras = dict(connection.execute("SELECT post_id, extra FROM scores").fetchall())
    assert extras == {"a": '{"ratio": null}', "b": '{"ratio": null}', "c": '{"ratio": null}', "d": '{"ratio": 0.25}'}


def test_rerun_skips_without_scoring(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 40)
    store = ScoreStore(tmp_path / "scores.duckdb")
    score_file(posts, FakeBundle(), store, options=RunOptions(batch_size=16))
    bundle = FakeBundle()
    summary = score_file(posts, bundle, store, options=RunOptions(batch_size=16))
    assert summary.rows_skipped == 40
    assert summary.rows_scored == 0
    assert summary.rows_in == 40
    assert all(not session.calls for session in bundle.sessions.values())
    assert bundle.tokenized == []


def test_rerun_fills_only_missing_rows(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 40)
    store = ScoreStore(tmp_path / "scores.duckdb")
    score_file(posts, FakeBundle(), store, options=RunOptions(batch_size=16))
    with store.connection() as connection:
        connection.execute("DELETE FROM scores WHERE row_number IN (1, 17, 18, 21)")
        connection.execute("DELETE FROM rejects WHERE row_number = 3")
    # Another batch size on the second run must not matter.
    summary = score_file(posts, FakeBundle(), store, options=RunOptions(batch_size=7))
    assert summary.rows_scored == 4
    assert summary.rows_rejected == 1
    assert summary.rows_skipped == 35
    with open_reader(store.db_path) as connection:
        total = connection.execute("SELECT (SELECT count(*) FROM scores) + (SELECT count(*) FROM rejects)").fetchone()[0]
    assert total == 40


def test_image_root_defaults_to_input_folder(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 4)
    summary = score_file(posts, FakeBundle(), ScoreStore(tmp_path / "scores.duckdb"))
    assert summary.image_states.get("ok") == 2


def test_cli_prints_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 12)
    requested: list[object] = []

    def fake_load_bundle(path: Path, *, providers: object = None, **options: object) -> FakeBundle:
        requested.append(providers)
        return FakeBundle()

    monkeypatch.setattr("drf_batch.bundle.load_bundle", fake_load_bundle)
    # The fake bundle has no manifest.json on disk, so the re-run shortcut cannot apply.
    monkeypatch.setattr("drf_batch.scoring.runner.manifest_only_bundle_if_done", lambda *args: None)
    arguments = ["score", str(posts), "--db", str(tmp_path / "s.duckdb"), "--no-progress", "--providers", "cpu"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert requested == ["cpu"]
    assert "rows in:        12" in result.output
    assert "rejected:       3 (no_modality 3)" in result.output
    assert "used CPUExecutionProvider" in result.output
    assert "posts/s" in result.output

    again = CliRunner().invoke(app, arguments)
    assert "already stored: 12" in again.output


def test_cli_missing_bundle_error(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 2)
    result = CliRunner().invoke(app, ["score", str(posts), "--bundle", str(tmp_path / "nope"), "--db", str(tmp_path / "s.duckdb")])
    assert result.exit_code == 2
    assert "could not load bundle" in result.output


def test_cli_unusable_db_path_error(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 2)
    folder = tmp_path / "dbdir"
    folder.mkdir()
    cases_by_path = {
        "directory": (folder, "is a directory"),
        "missing folder": (tmp_path / "nope" / "s.duckdb", "does not exist"),
    }
    for name, (db_path, expected) in cases_by_path.items():
        result = CliRunner().invoke(app, ["score", str(posts), "--bundle", str(tmp_path / "no-bundle"), "--db", str(db_path)])
        assert result.exit_code == 2, name
        assert expected in result.output, name
        assert str(db_path) in result.output, name
        assert "could not load bundle" not in result.output, name
        assert result.exception is None or isinstance(result.exception, SystemExit), name


def test_cli_invalid_db_file_error(tmp_path: Path) -> None:
    posts = _mixed_posts(tmp_path / "posts.parquet", 2)
    db_path = tmp_path / "not-duckdb.duckdb"
    db_path.write_bytes(b"this is not a DuckDB file" * 200)
    result = CliRunner().invoke(app, ["score", str(posts), "--bundle", str(tmp_path / "no-bundle"), "--db", str(db_path)])
    assert result.exit_code == 2, result.output
    assert str(db_path) in result.output


_MEMORY_RUN = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import pyarrow as pa, pyarrow.parquet as pq
    from scoring_fakes import FakeBundle
    from drf_batch.scoring.runner import RunOptions, score_file
    from drf_batch.storage import ScoreStore

    rows = int(sys.argv[2])
    folder = Path(sys.argv[3])
    posts = folder / f"posts-{rows}.parquet"
    writer = pq.ParquetWriter(posts, pa.schema([("post_id", pa.string()), ("text", pa.string()), ("lang", pa.string())]))
    for start in range(0, rows, 5000):
        count = min(5000, rows - start)
        writer.write_table(pa.table({
            "post_id": [f"p{index}" for index in range(start, start + count)],
            "text": [f"some longer text for post {index} " * 4 for index in range(start, start + count)],
            "lang": ["en"] * count,
        }), row_group_size=1000)
    writer.close()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    score_file(posts, FakeBundle(), ScoreStore(folder / f"scores-{rows}.duckdb"), options=RunOptions(batch_size=1000))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before, after)
    """
)


def _peak_rss_kib(tmp_path: Path, rows: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_RUN, str(TESTS_DIR), str(rows), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[1])


def test_peak_memory_flat_with_file_size(tmp_path: Path) -> None:
    small = _peak_rss_kib(tmp_path, 2_000)
    large = _peak_rss_kib(tmp_path, 40_000)
    # 20 times the rows may add at most 40 MiB: the one-byte-per-row map, DuckDB's key index and
    # allocator noise, but never the rows themselves.
    assert large - small < 40 * 1024, (small, large)
