"""AppTest runs of the dashboard on sample_data/posts.parquet scored by `drf-batch score`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_support import APP_SCRIPT, REPO_ROOT

pytestmark = pytest.mark.slow

SAMPLE_POSTS = REPO_ROOT / "sample_data" / "posts.parquet"
SAMPLE_IMAGES = REPO_ROOT / "sample_data" / "images"
SECTIONS = ("Overview", "Trends", "Quality", "Post explorer", "Runs and rejects")


def start_app(monkeypatch: pytest.MonkeyPatch, db_path: Path, image_root: Path | None) -> AppTest:
    monkeypatch.setenv("DRF_BATCH_DASHBOARD_DB", str(db_path))
    if image_root is None:
        monkeypatch.delenv("DRF_BATCH_DASHBOARD_IMAGE_ROOT", raising=False)
    else:
        monkeypatch.setenv("DRF_BATCH_DASHBOARD_IMAGE_ROOT", str(image_root))
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    app.run()
    assert not app.exception, app.exception
    return app


def query_one(db_path: Path, statement: str, params: list | None = None):
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute(statement, params or []).fetchone()


def test_scored_overview_matches_run(monkeypatch, scored_db):
    rows_scored, rows_rejected = query_one(scored_db, "SELECT rows_scored, rows_rejected FROM runs")
    app = start_app(monkeypatch, scored_db, SAMPLE_IMAGES)
    displayed = {metric.label: metric.value for metric in app.metric}

    assert rows_scored > 0
    assert displayed["Posts scored"] == f"{rows_scored:,}"
    assert displayed["Rows rejected"] == f"{rows_rejected:,}"
    assert {"Negative share", "Neutral share", "Positive share"} <= set(displayed)


def test_scored_every_section_renders(monkeypatch, scored_db):
    app = start_app(monkeypatch, scored_db, SAMPLE_IMAGES)

    for section in SECTIONS:
        app.sidebar.radio(key="section").set_value(section).run()
        assert not app.exception, (section, app.exception)
        assert not app.error, (section, [error.value for error in app.error])
        if section in ("Trends", "Quality"):
            assert app.get("vega_lite_chart"), section


def test_scored_explorer_shows_image_from_path(monkeypatch, scored_db):
    post_id, image_path = query_one(
        scored_db, "SELECT post_id, image_path FROM scores WHERE image_state = 'ok' AND image_path IS NOT NULL ORDER BY post_id"
    )
    app = start_app(monkeypatch, scored_db, SAMPLE_IMAGES)
    app.sidebar.radio(key="section").set_value("Post explorer").run()
    app.text_input(key="filter_post_id").set_value(post_id).run()

    assert (SAMPLE_IMAGES / image_path).is_file()
    assert len(app.get("image")) == 1
    texts = [text.value for text in app.text]
    assert any(text.startswith(f"post_id: {post_id} ") for text in texts)


def test_scored_explorer_reads_image_bytes_back(monkeypatch, scored_db):
    with duckdb.connect() as connection:
        row = connection.execute(
            "SELECT post_id FROM read_parquet(?) WHERE image_bytes IS NOT NULL AND image_path IS NULL", [str(SAMPLE_POSTS)]
        ).fetchone()
    if row is None:
        pytest.skip("sample_data/posts.parquet has no post with image_bytes only")
    state = query_one(scored_db, "SELECT image_state FROM scores WHERE post_id = ?", [row[0]])
    if state is None or state[0] not in ("ok", "low_quality"):
        pytest.skip(f"the image_bytes post {row[0]} was not scored with a readable image")

    app = start_app(monkeypatch, scored_db, SAMPLE_IMAGES)
    app.sidebar.radio(key="section").set_value("Post explorer").run()
    app.text_input(key="filter_post_id").set_value(row[0]).run()

    assert len(app.get("image")) == 1


def test_scored_explorer_rejects_escaping_image_root(monkeypatch, scored_db, tmp_path):
    inner_root = tmp_path / "root"
    inner_root.mkdir()
    (inner_root / "link.jpg").symlink_to(next(SAMPLE_IMAGES.glob("*.jpg")))
    post_id = query_one(scored_db, "SELECT post_id FROM scores WHERE image_path IS NOT NULL ORDER BY post_id")[0]

    app = start_app(monkeypatch, scored_db, inner_root)
    app.sidebar.radio(key="section").set_value("Post explorer").run()
    app.text_input(key="filter_post_id").set_value(post_id).run()

    assert not app.get("image")


def test_dashboard_during_scoring_run(monkeypatch, default_bundle, tmp_path):
    db_path = tmp_path / "live.duckdb"
    command = [
        sys.executable, "-c", "from drf_batch.cli import app; app()",
        "score", str(SAMPLE_POSTS),
        "--bundle", str(default_bundle),
        "--image-root", str(SAMPLE_IMAGES),
        "--db", str(db_path),
        "--providers", "cpu",
        "--no-progress",
        "--batch-size", "4",
        "--pause-after-batch", "1.0",
    ]  # fmt: skip
    monkeypatch.setenv("DRF_BATCH_DASHBOARD_DB", str(db_path))
    monkeypatch.setenv("DRF_BATCH_DASHBOARD_IMAGE_ROOT", str(SAMPLE_IMAGES))
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    runs_while_scoring = 0
    saw_progress_note = False

    scorer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while scorer.poll() is None and time.monotonic() < deadline:
            if db_path.is_file():
                app.run()
                assert not app.exception, app.exception
                runs_while_scoring += 1
                saw_progress_note |= any("Scoring in progress" in info.value for info in app.info)
            time.sleep(0.2)
    finally:
        if scorer.poll() is None:
            scorer.kill()
        output, _ = scorer.communicate(timeout=60)

    assert scorer.returncode == 0, output
    assert runs_while_scoring > 0
    assert saw_progress_note
    app.run()
    rows_scored = query_one(db_path, "SELECT rows_scored FROM runs")[0]
    assert {metric.label: metric.value for metric in app.metric}["Posts scored"] == f"{rows_scored:,}"
    assert not any("Scoring in progress" in info.value for info in app.info)


def test_scored_explorer_detects_changed_input(monkeypatch, scored_db, tmp_path):
    post_id, row_number = query_one(
        scored_db,
        "SELECT post_id, row_number FROM scores WHERE image_path IS NULL AND image_state IN ('ok', 'low_quality')",
    )
    moved_db = tmp_path / "scores.duckdb"
    changed_input = tmp_path / "posts.parquet"
    shutil.copy(scored_db, moved_db)
    with duckdb.connect(str(moved_db)) as connection:
        connection.execute("UPDATE scores SET input_path = ?", [str(changed_input)])
        connection.execute(
            "COPY (SELECT * REPLACE ('other-' || post_id AS post_id) FROM read_parquet(?)) TO ? (FORMAT parquet)",
            [str(SAMPLE_POSTS), str(changed_input)],
        )

    app = start_app(monkeypatch, moved_db, SAMPLE_IMAGES)
    app.sidebar.radio(key="section").set_value("Post explorer").run()
    app.text_input(key="filter_post_id").set_value(post_id).run()

    assert row_number is not None
    assert not app.get("image")
    assert any("changed since scoring" in caption.value for caption in app.caption)
