"""Runs and rejects: what was scored with which bundle, rejected rows by reason, and run comparison."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import queries
from app.views.common import DashboardContext, format_count, format_share

PAGE_SIZE = 25


def _run_label(runs: pd.DataFrame, run_id: str) -> str:
    row = runs[runs["run_id"] == run_id].iloc[0]
    started = row["started_at"]
    started_text = f"{started:%Y-%m-%d %H:%M}" if pd.notna(started) else "not started"
    return f"{run_id} · {row['bundle_name']} · {started_text}"


def _page_input(label: str, page_count: int, *, key: str) -> int:
    """Draw a page number input, first moving a page beyond the last one (after a filter change) back."""
    current = st.session_state.get(key, 1)
    if not 1 <= current <= page_count:
        st.session_state[key] = min(max(int(current), 1), page_count)
    elif key not in st.session_state:
        st.session_state[key] = 1
    return int(st.number_input(label, min_value=1, max_value=page_count, step=1, key=key))


def _render_runs(runs: pd.DataFrame) -> None:
    st.subheader("Runs")
    columns = [
        name
        for name in (
            "run_id", "status", "bundle_name", "bundle_id", "engine", "providers_requested", "providers_used",
            "input_path", "rows_in", "rows_scored", "rows_rejected", "rows_skipped", "seconds",
            "posts_per_second", "started_at", "finished_at", "drf_batch_version", "error",
        )
        if name in runs.columns
    ]  # fmt: skip
    st.dataframe(
        runs[columns],
        hide_index=True,
        width="stretch",
        column_config={
            "posts_per_second": st.column_config.NumberColumn("posts/s", format="%.1f"),
            "seconds": st.column_config.NumberColumn(format="%.1f"),
        },
    )


def _render_rejects(context: DashboardContext, runs: pd.DataFrame) -> None:
    st.subheader("Rejects")
    run_options = [None, *runs["run_id"]]
    run_id = st.selectbox(
        "Run",
        run_options,
        format_func=lambda value: "all runs" if value is None else _run_label(runs, value),
        key="rejects_run",
    )
    reasons: pd.DataFrame = context.query(queries.reject_reasons, run_id)
    if reasons.empty:
        st.info("No rows were rejected.")
        return
    st.dataframe(reasons, hide_index=True, width="stretch")

    reason_code = st.selectbox("Rows with reason", [None, *reasons["reason_code"]],
                               format_func=lambda value: "any reason" if value is None else value, key="rejects_reason")  # fmt: skip
    total = int(reasons["rows"].sum()) if reason_code is None else int(reasons.loc[reasons["reason_code"] == reason_code, "rows"].sum())
    page_count = max(1, -(-total // PAGE_SIZE))
    page = _page_input("Page", page_count, key="rejects_page")
    rows: pd.DataFrame = context.query(queries.reject_page, run_id, reason_code, PAGE_SIZE, (int(page) - 1) * PAGE_SIZE)
    st.caption(f"{format_count(total)} rejected rows · page {page} of {page_count}")
    st.dataframe(rows, hide_index=True, width="stretch")


def _render_comparison(context: DashboardContext, runs: pd.DataFrame) -> None:
    st.subheader("Compare two runs")
    finished = runs[runs["bundle_id"].notna()]
    if finished["bundle_id"].nunique() < 2:
        st.info("Comparing needs runs of two different bundles in this database; score the same input with another bundle.")
        return

    run_ids = list(finished["run_id"])
    first, second = st.columns(2)
    run_a = first.selectbox("Run A", run_ids, index=0, format_func=lambda value: _run_label(runs, value), key="compare_a")
    other_bundle_runs = [run for run in run_ids if finished.set_index("run_id").at[run, "bundle_id"] != finished.set_index("run_id").at[run_a, "bundle_id"]]
    run_b = second.selectbox("Run B (another bundle)", other_bundle_runs, format_func=lambda value: _run_label(runs, value), key="compare_b")
    if run_b is None:
        return

    shared_posts: pd.DataFrame = context.query(queries.compare_runs, run_a, run_b)
    shared = int(shared_posts["posts"].sum()) if not shared_posts.empty else 0
    if shared == 0:
        st.info("These runs share no post_id.")
        return
    disagree = shared_posts["label_a"] != shared_posts["label_b"]
    disagreeing = int(shared_posts.loc[disagree, "posts"].sum())
    figures = st.columns(3)
    figures[0].metric("Shared posts", format_count(shared))
    figures[1].metric("Label agreement", format_share(shared - disagreeing, shared))
    figures[2].metric("Disagreements", format_count(disagreeing))

    matrix = shared_posts.pivot_table(index="label_a", columns="label_b", values="posts", fill_value=0, aggfunc="sum")
    matrix.index.name = "label in run A"
    matrix.columns.name = "label in run B"
    st.markdown("Labels of shared posts (rows: run A, columns: run B)")
    st.dataframe(matrix)

    by_states = (
        shared_posts.assign(disagreements=shared_posts["posts"].where(disagree, 0))
        .groupby(["image_state_a", "image_state_b", "text_state_a", "text_state_b"], as_index=False, dropna=False)[
            ["posts", "disagreements"]
        ]
        .sum()
        .sort_values("posts", ascending=False)
    )
    by_states["agreement"] = 1 - by_states["disagreements"] / by_states["posts"]
    with st.expander("Agreement by modality states"):
        st.dataframe(
            by_states,
            hide_index=True,
            width="stretch",
            column_config={"agreement": st.column_config.NumberColumn(format="percent")},
        )

    if disagreeing:
        page_count = max(1, -(-disagreeing // PAGE_SIZE))
        page = _page_input("Disagreements page", page_count, key="compare_page")
        rows: pd.DataFrame = context.query(queries.disagreement_page, run_a, run_b, PAGE_SIZE, (int(page) - 1) * PAGE_SIZE)
        st.dataframe(rows, hide_index=True, width="stretch")


def render(context: DashboardContext) -> None:
    st.header("Runs and rejects")
    runs: pd.DataFrame = context.query(queries.runs)
    if runs.empty:
        st.info("This database has no runs yet.")
        return
    _render_runs(runs)
    _render_rejects(context, runs)
    _render_comparison(context, runs)
