"""Streamlit entry point of the drf-batch dashboard.

Run it with `drf-batch dashboard --db scores.duckdb [--image-root DIR]`, or directly with
`streamlit run app/dashboard.py -- --db scores.duckdb [--image-root DIR]`.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

# `streamlit run` executes this file as a script, so the repository root is put on the import
# path to make the `app` package importable.
if __package__ in (None, ""):
    _REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
    if _REPOSITORY_ROOT not in sys.path:
        sys.path.insert(0, _REPOSITORY_ROOT)

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import queries, settings  # noqa: E402
from app.database import DatabaseBusyError, QueryCache  # noqa: E402
from app.views import explorer, overview, quality, runs, trends  # noqa: E402
from app.views.common import DashboardContext  # noqa: E402

logger = logging.getLogger(__name__)

SECTIONS = {
    "Overview": overview.render,
    "Trends": trends.render,
    "Quality": quality.render,
    explorer.SECTION: explorer.render,
    "Runs and rejects": runs.render,
}


@st.cache_resource
def _query_cache() -> QueryCache:
    return QueryCache()


def _show_busy_note(db_path: Path) -> None:
    st.warning(
        f"A scoring run is writing to {db_path} and holds its lock, so it cannot be read right now. "
        "The dashboard shows the data as soon as the run finishes its current batch; reload in a few seconds."
    )
    st.button("Reload")


def _select_scope(bundles: pd.DataFrame, all_runs: pd.DataFrame) -> tuple[queries.Scope, dict | None]:
    if bundles.empty:
        return queries.Scope(bundle_id=None), None

    bundle_ids = list(bundles["bundle_id"])
    names = dict(zip(bundles["bundle_id"], bundles["name"]))
    bundle_id = st.sidebar.selectbox(
        "Bundle",
        bundle_ids,
        format_func=lambda value: f"{names[value]} ({value[:8]})",
        key="scope_bundle",
        help="Scores are stored per post and bundle; every section except Runs and rejects shows one bundle.",
    )
    bundle_runs = all_runs[all_runs["bundle_id"] == bundle_id]
    run_id = st.sidebar.selectbox(
        "Run",
        [None, *bundle_runs["run_id"]],
        format_func=lambda value: "all runs of this bundle" if value is None else value,
        key="scope_run",
    )
    bundle = bundles[bundles["bundle_id"] == bundle_id].iloc[0].to_dict()
    return queries.Scope(bundle_id=bundle_id, run_id=run_id), bundle


def main() -> None:
    st.set_page_config(page_title="drf-batch dashboard", layout="wide")
    explorer.persist_state()
    options = settings.parse_settings(sys.argv[1:])

    st.sidebar.title("drf-batch")
    if options.db_path is None:
        st.error(
            "No scores database given. Start the dashboard with "
            "`drf-batch dashboard --db scores.duckdb` (or `streamlit run app/dashboard.py -- --db scores.duckdb`)."
        )
        return

    cache = _query_cache()
    stale_note = st.empty()
    try:
        missing = cache.run(options.db_path, queries.missing_schema).value
        if missing:
            st.error(
                f"{options.db_path} is not a drf-batch scores database: it lacks {', '.join(missing)}. "
                "Pass the file written by `drf-batch score --db`."
            )
            return
        bundles = cache.run(options.db_path, queries.bundles).value
        all_runs = cache.run(options.db_path, queries.runs).value
        running = cache.run(options.db_path, queries.running_runs).value
    except FileNotFoundError as error:
        st.error(str(error))
        return
    except DatabaseBusyError:
        _show_busy_note(options.db_path)
        return
    except duckdb.Error as error:
        logger.exception("failed to read %s", options.db_path)
        st.error(f"Cannot read {options.db_path} as a DuckDB database: {error}")
        return

    st.sidebar.caption(f"Database: {options.db_path}")
    scope, bundle = _select_scope(bundles, all_runs)
    section = st.sidebar.radio("Section", list(SECTIONS), key="section")
    if st.sidebar.button("Refresh data", help="Forget cached query results and read the database again."):
        cache.clear()

    if not running.empty:
        names = ", ".join(f"{row.run_id} (started {row.started_at:%H:%M:%S})" for row in running.itertuples())
        st.info(
            f"Scoring in progress: {names}. Figures show the batches committed so far and change as the run "
            "continues; reload to update them."
        )

    labels = tuple(bundle["labels"]) if bundle is not None and bundle.get("labels") is not None else ()
    context = DashboardContext(
        db_path=options.db_path, image_root=options.image_root, cache=cache, scope=scope, bundle=bundle, labels=labels
    )
    try:
        SECTIONS[section](context)
    except DatabaseBusyError:
        _show_busy_note(options.db_path)
    except FileNotFoundError as error:
        st.error(str(error))
    except duckdb.Error as error:
        logger.exception("query for section %s failed on %s", section, options.db_path)
        st.error(
            f"A query of the {section} section failed on {options.db_path}: {error}. "
            "Check that the file was written by a compatible `drf-batch score`."
        )

    if context.stale_loaded_at:
        loaded = datetime.fromtimestamp(min(context.stale_loaded_at))
        stale_note.warning(
            f"A scoring run is writing to this database right now. Parts of this page show results "
            f"loaded at {loaded:%H:%M:%S}; reload in a few seconds for current data."
        )


main()
