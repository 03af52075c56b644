"""Streamlit AppTest runs of the dashboard sections against synthetic scores databases."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_support import APP_SCRIPT, SyntheticDatabase, build_synthetic_with_images

from app import queries  # noqa: E402  (importable once dashboard_support put the repository root on sys.path)

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticDatabase, Path]:
    return build_synthetic_with_images(tmp_path_factory.mktemp("dashboard"), rows=600)


def start_app(monkeypatch: pytest.MonkeyPatch, db_path: Path, image_root: Path | None = None) -> AppTest:
    monkeypatch.setenv("DRF_BATCH_DASHBOARD_DB", str(db_path))
    if image_root is None:
        monkeypatch.delenv("DRF_BATCH_DASHBOARD_IMAGE_ROOT", raising=False)
    else:
        monkeypatch.setenv("DRF_BATCH_DASHBOARD_IMAGE_ROOT", str(image_root))
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=TIMEOUT_S)
    app.run()
    assert not app.exception, app.exception
    return app


def open_section(app: AppTest, section: str) -> AppTest:
    app.sidebar.radio(key="section").set_value(section).run()
    assert not app.exception, app.exception
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def sql_value(db_path: Path, statement: str, params: list | None = None):
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute(statement, params or []).fetchone()[0]


def match_count(app: AppTest) -> int:
    for markdown in app.markdown:
        if "posts match" in markdown.value:
            return int(markdown.value.split("**")[1].split()[0].replace(",", ""))
    raise AssertionError("the explorer shows no 'posts match' line")


def test_overview_key_figures_match_database(monkeypatch, synthetic):
    database, image_root = synthetic
    app = start_app(monkeypatch, database.path, image_root)
    displayed = metrics(app)

    assert displayed["Posts scored"] == f"{database.rows:,}"
    assert displayed["Rows rejected"] == f"{database.rejected_rows:,}"
    positives = sql_value(
        database.path, "SELECT count(*) FROM scores WHERE bundle_id = ? AND label = 'positive'", [database.bundle_a]
    )
    assert displayed["Positive share"] == f"{100 * positives / database.rows:.1f}%"


def test_overview_state_shares_match_database(monkeypatch, synthetic):
    database, image_root = synthetic
    app = start_app(monkeypatch, database.path, image_root)
    displayed = metrics(app)

    for modality in ("image", "text"):
        for state in ("low_quality", "missing", "unreadable"):
            posts = sql_value(
                database.path,
                f"SELECT count(*) FROM scores WHERE bundle_id = ? AND {modality}_state = ?",
                [database.bundle_a, state],
            )
            label = f"{modality.capitalize()} {state.replace('_', ' ')}"
            assert displayed[label] == f"{100 * posts / database.rows:.1f}%", label
    assert len(app.get("vega_lite_chart")) == 1


def test_overview_second_bundle_counts_its_own_posts(monkeypatch, synthetic):
    database, image_root = synthetic
    app = start_app(monkeypatch, database.path, image_root)
    app.sidebar.selectbox(key="scope_bundle").set_value(database.bundle_b).run()

    assert metrics(app)["Posts scored"] == f"{database.shared_rows:,}"
    assert metrics(app)["Rows rejected"] == "0"


def test_trends_show_label_shares(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Trends")

    assert len(app.get("vega_lite_chart")) == 2
    assert any(f"{database.rows:,} posts with a timestamp" in caption.value for caption in app.caption)


def test_trends_without_timestamps_show_note(monkeypatch, synthetic, tmp_path):
    database, image_root = synthetic
    copy = tmp_path / "undated.duckdb"
    shutil.copy(database.path, copy)
    with duckdb.connect(str(copy)) as connection:
        connection.execute("UPDATE scores SET created_at = NULL")

    app = open_section(start_app(monkeypatch, copy, image_root), "Trends")

    assert any("no timestamps" in info.value for info in app.info)
    assert not app.get("vega_lite_chart")


def test_quality_near_threshold_opens_explorer(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Quality")
    assert len(app.get("vega_lite_chart")) >= 2

    app.button(key="near_threshold_image").click().run()

    assert not app.exception, app.exception
    assert app.sidebar.radio(key="section").value == "Post explorer"
    assert app.checkbox(key="filter_image_quality_on").value is True
    low = app.number_input(key="filter_image_quality_min").value
    high = app.number_input(key="filter_image_quality_max").value
    assert low < -550.0 < high
    expected = sql_value(
        database.path,
        "SELECT count(*) FROM scores WHERE bundle_id = ? AND image_quality BETWEEN ? AND ?",
        [database.bundle_a, low, high],
    )
    assert expected > 0
    assert match_count(app) == expected
    assert app.selectbox(key="explorer_sort").value == "image_threshold_distance"


def test_explorer_filters_match_sql(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")
    assert match_count(app) == database.rows

    app.multiselect(key="filter_labels").set_value(["positive", "negative"]).run()
    app.multiselect(key="filter_image_states").set_value(["low_quality"]).run()
    app.slider(key="filter_confidence").set_value((0.5, 1.0)).run()

    expected = sql_value(
        database.path,
        """
        SELECT count(*) FROM scores WHERE bundle_id = ? AND label IN ('positive', 'negative')
          AND image_state = 'low_quality' AND confidence >= 0.5
        """,
        [database.bundle_a],
    )
    assert expected > 0
    assert match_count(app) == expected


def test_explorer_filters_passed_through_column(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")

    app.multiselect(key="filter_extra_keys").set_value(["lang"]).run()
    options = app.multiselect(key="filter_extra_value:lang").options
    assert len(options) == 8
    app.multiselect(key="filter_extra_value:lang").set_value(["de"]).run()

    expected = sql_value(
        database.path, "SELECT count(*) FROM scores WHERE bundle_id = ? AND extra->>'lang' = 'de'", [database.bundle_a]
    )
    assert 0 < expected < database.rows
    assert match_count(app) == expected


def test_explorer_text_filter_is_not_sql(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")

    app.text_input(key="filter_text_contains").set_value("'; DROP TABLE scores; --").run()
    assert not app.exception, app.exception
    assert match_count(app) == 0

    app.text_input(key="filter_text_contains").set_value("POST NUMBER 12").run()
    expected = sql_value(
        database.path,
        "SELECT count(*) FROM scores WHERE bundle_id = ? AND text ILIKE '%post number 12%'",
        [database.bundle_a],
    )
    assert expected > 0
    assert match_count(app) == expected
    assert sql_value(database.path, "SELECT count(*) FROM scores WHERE bundle_id = ?", [database.bundle_a]) == database.rows


def test_explorer_pagination_moves_through_pages(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")
    app.selectbox(key="explorer_sort").set_value("post_id").run()
    first_page = [text.value for text in app.text if text.value.startswith("post_id:")]

    app.number_input(key="explorer_page").set_value(3).run()
    third_page = [text.value for text in app.text if text.value.startswith("post_id:")]

    assert len(first_page) == 10
    assert first_page[0].startswith("post_id: post-000000000 ")
    assert third_page[0].startswith("post_id: post-000000020 ")
    assert any("page 3 of 60" in markdown.value for markdown in app.markdown)


def test_explorer_filter_change_returns_to_first_page(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")
    app.number_input(key="explorer_page").set_value(5).run()

    app.multiselect(key="filter_labels").set_value(["neutral"]).run()

    assert app.number_input(key="explorer_page").value == 1


def test_explorer_cards_show_thumbnails(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")
    app.multiselect(key="filter_image_states").set_value(["ok", "low_quality"]).run()

    assert len(app.get("image")) == 10


def test_explorer_without_image_root_explains_missing_thumbnails(monkeypatch, synthetic):
    database, _ = synthetic
    app = open_section(start_app(monkeypatch, database.path, None), "Post explorer")
    app.multiselect(key="filter_image_states").set_value(["ok"]).run()

    assert not app.get("image")
    assert any("image root unknown" in caption.value for caption in app.caption)


def test_explorer_exports_filtered_view(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Post explorer")
    app.multiselect(key="filter_labels").set_value(["neutral"]).run()
    expected = match_count(app)

    app.button(key="export_parquet").click().run()
    exported = app.session_state["explorer_export"]
    parquet_rows = pq.read_table(exported["path"])
    assert parquet_rows.num_rows == expected
    assert set(parquet_rows.column("label").to_pylist()) == {"neutral"}
    assert "Download PARQUET" in app.get("download_button")[0].label

    app.button(key="export_csv").click().run()
    exported = app.session_state["explorer_export"]
    with duckdb.connect() as connection:
        csv_rows = connection.execute("SELECT count(*) FROM read_csv(?)", [exported["path"]]).fetchone()[0]
    assert csv_rows == expected


def test_runs_section_groups_rejects(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Runs and rejects")

    runs_table = app.dataframe[0].value
    assert set(runs_table["run_id"]) == {database.run_a, database.run_b}
    assert "providers_used" in runs_table.columns
    assert "posts_per_second" in runs_table.columns
    reasons = app.dataframe[1].value
    assert set(reasons["reason_code"]) == {"no_modality", "missing_post_id", "duplicate_post_id"}
    assert reasons["rows"].sum() == database.rejected_rows


def test_runs_compare_two_bundles(monkeypatch, synthetic):
    database, image_root = synthetic
    app = open_section(start_app(monkeypatch, database.path, image_root), "Runs and rejects")
    app.selectbox(key="compare_a").set_value(database.run_a).run()
    app.selectbox(key="compare_b").set_value(database.run_b).run()

    disagreements = sql_value(
        database.path,
        "SELECT count(*) FROM scores a JOIN scores b USING (post_id) WHERE a.run_id = ? AND b.run_id = ? AND a.label <> b.label",
        [database.run_a, database.run_b],
    )
    displayed = metrics(app)
    assert displayed["Shared posts"] == f"{database.shared_rows:,}"
    assert displayed["Disagreements"] == f"{disagreements:,}"
    disagreement_rows = app.dataframe[-1].value
    assert len(disagreement_rows) == min(disagreements, 25)
    assert (disagreement_rows["label_a"] != disagreement_rows["label_b"]).all()


def test_dashboard_without_database_shows_error(monkeypatch, tmp_path):
    app = start_app(monkeypatch, tmp_path / "absent.duckdb")

    assert "not found" in app.error[0].value


def test_dashboard_rejects_other_database(monkeypatch, tmp_path):
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as connection:
        connection.execute("CREATE TABLE scores (post_id VARCHAR)")

    app = start_app(monkeypatch, other)

    message = app.error[0].value
    assert "not a drf-batch scores database" in message
    assert "table runs" in message
    assert "column scores.label" in message


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time, duckdb
    connection = duckdb.connect(sys.argv[1])
    connection.execute(
        "INSERT INTO runs (run_id, bundle_id, bundle_name, status, started_at) "
        "VALUES ('run-live', 'synthbundlea0001', 'synthetic-fp32', 'running', now())"
    )
    connection.execute("CHECKPOINT")
    print("locked", flush=True)
    sys.stdin.readline()
    connection.close()
    """
)


@contextmanager
def hold_write_lock(db_path: Path) -> Iterator[None]:
    """Keep `db_path` open read-write in another process, as `drf-batch score` does during a batch."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "locked"
        yield
    finally:
        writer.communicate("done\n", timeout=30)


def test_dashboard_serves_cached_results_while_locked(monkeypatch, synthetic, tmp_path):
    database, image_root = synthetic
    copy = tmp_path / "live.duckdb"
    shutil.copy(database.path, copy)
    app = start_app(monkeypatch, copy, image_root)
    assert metrics(app)["Posts scored"] == f"{database.rows:,}"

    with hold_write_lock(copy):
        app.run()
        assert not app.exception, app.exception
        assert any("scoring run is writing to this database" in warning.value for warning in app.warning)
        assert metrics(app)["Posts scored"] == f"{database.rows:,}"

    app.run()
    assert not app.exception, app.exception
    assert not app.warning
    assert any("run-live" in info.value for info in app.info)


def test_dashboard_shows_note_when_locked_before_first_load(monkeypatch, synthetic, tmp_path):
    database, image_root = synthetic
    copy = tmp_path / "locked.duckdb"
    shutil.copy(database.path, copy)

    with hold_write_lock(copy):
        app = start_app(monkeypatch, copy, image_root)
        assert any("holds its lock" in warning.value for warning in app.warning)
        assert not app.metric


def test_post_conditions_bind_every_value():
    post_filter = queries.PostFilter(
        scope=queries.Scope(bundle_id="b'1", run_id=None),
        labels=("x' OR '1'='1",),
        text_contains="%'; --",
        extra=(("lang", ("en' --",)),),
    )

    where, params = queries.post_conditions(post_filter)

    assert "'" not in where.replace("'$.", "")
    assert params == ["b'1", ["x' OR '1'='1"], "%'; --", ["en' --"], '$."lang"']


def test_json_path_rejects_quoted_key():
    with pytest.raises(ValueError, match="quote"):
        queries.json_path('lang"] OR 1=1')


def test_dashboard_reports_unreadable_file(monkeypatch, tmp_path):
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"this is not a DuckDB file" * 100)

    app = start_app(monkeypatch, garbage)

    assert "Cannot read" in app.error[0].value
