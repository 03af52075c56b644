"""Overview: key figures, label shares, modality-state shares and labels by modality state."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import queries
from app.views.common import DashboardContext, format_count, format_share, is_empty

FLAGGED_STATES = ("low_quality", "missing", "unreadable")


def _label_counts(counts: pd.DataFrame) -> pd.Series:
    image_rows = counts[counts["modality"] == "image"]
    return image_rows.groupby("label")["posts"].sum()


def render(context: DashboardContext) -> None:
    st.header("Overview")
    counts: pd.DataFrame = context.query(queries.state_label_counts, context.scope)
    rejected: int = context.query(queries.rejected_count, context.scope)

    if is_empty(counts):
        st.info("No scores for this selection yet. Run `drf-batch score` into this database first.")
        st.metric("Rows rejected", format_count(rejected))
        return

    label_counts = _label_counts(counts)
    total = int(label_counts.sum())
    labels = list(context.labels) or sorted(label_counts.index)

    figures = st.columns(2 + len(labels))
    figures[0].metric("Posts scored", format_count(total))
    figures[1].metric("Rows rejected", format_count(rejected))
    for column, label in zip(figures[2:], labels):
        column.metric(f"{label.capitalize()} share", format_share(label_counts.get(label, 0), total))

    st.subheader("Modality states")
    state_totals = counts.groupby(["modality", "state"])["posts"].sum()
    state_columns = st.columns(2 * len(FLAGGED_STATES))
    index = 0
    for modality in queries.MODALITIES:
        for state in FLAGGED_STATES:
            value = int(state_totals.get((modality, state), 0))
            state_columns[index].metric(
                f"{modality.capitalize()} {state.replace('_', ' ')}",
                format_share(value, total),
                help=f"{format_count(value)} of {format_count(total)} posts",
            )
            index += 1

    st.subheader("Labels by modality state")
    st.caption("Each bar splits the posts of one state by label, so bars of different states compare label shares.")
    chart_data = counts.assign(state=counts["state"].fillna("unknown"))
    chart = (
        alt.Chart(chart_data)
        .mark_bar()
        .encode(
            x=alt.X("state:N", title="state", sort=list(queries.STATES)),
            y=alt.Y("sum(posts):Q", stack="normalize", title="share of posts", axis=alt.Axis(format="%")),
            color=alt.Color("label:N", sort=labels),
            column=alt.Column("modality:N", title=None),
            tooltip=["modality", "state", "label", alt.Tooltip("posts:Q", format=","),
                     alt.Tooltip("mean_confidence:Q", format=".3f")],
        )
        .properties(width=260, height=260)
    )  # fmt: skip
    st.altair_chart(chart)

    confidence = (
        counts.assign(weighted=counts["mean_confidence"] * counts["posts"])
        .groupby(["modality", "state"], as_index=False)[["posts", "weighted"]]
        .sum()
    )
    confidence["mean confidence"] = confidence["weighted"] / confidence["posts"]
    st.dataframe(
        confidence.drop(columns="weighted"),
        hide_index=True,
        column_config={"mean confidence": st.column_config.NumberColumn(format="%.3f")},
    )
