"""Trends: label shares and flagged-modality shares over time, from the posts' `created_at`."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from app import queries
from app.views.common import DashboardContext, format_count

# Aim for at most about this many buckets when choosing the bucket size automatically.
MAX_AUTOMATIC_BUCKETS = 120


def automatic_granularity(span: timedelta) -> str:
    """Pick the finest of hour, day, week or month that keeps the bucket count near MAX_AUTOMATIC_BUCKETS."""
    for granularity, size in (
        ("hour", timedelta(hours=1)),
        ("day", timedelta(days=1)),
        ("week", timedelta(weeks=1)),
    ):
        if span / size <= MAX_AUTOMATIC_BUCKETS:
            return granularity
    return "month"


def render(context: DashboardContext) -> None:
    st.header("Trends")
    earliest, latest, dated = context.query(queries.created_at_span, context.scope)
    if dated == 0:
        st.info(
            "These posts have no timestamps. Trends need a `created_at` column in the input Parquet, "
            "which `drf-batch score` copies into the scores."
        )
        return

    suggested = automatic_granularity(latest - earliest)
    options = list(queries.TREND_GRANULARITIES)
    granularity = st.segmented_control(
        "Bucket size", options, default=suggested, key="trend_granularity"
    ) or suggested
    st.caption(f"{format_count(dated)} posts with a timestamp, from {earliest:%Y-%m-%d %H:%M} to {latest:%Y-%m-%d %H:%M}.")

    trend: pd.DataFrame = context.query(queries.label_trend, context.scope, granularity)
    totals = trend.groupby("period")["posts"].transform("sum")
    shares = trend.assign(share=trend["posts"] / totals)

    st.subheader("Label shares")
    label_chart = (
        alt.Chart(shares)
        .mark_area()
        .encode(
            x=alt.X("period:T", title=granularity),
            y=alt.Y("share:Q", stack="normalize", axis=alt.Axis(format="%"), title="share of posts"),
            color=alt.Color("label:N", sort=list(context.labels)),
            tooltip=[alt.Tooltip("period:T"), "label", alt.Tooltip("posts:Q", format=","),
                     alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=300)
    )  # fmt: skip
    st.altair_chart(label_chart, width="stretch")

    st.subheader("Flagged modalities")
    st.caption("Share of posts per bucket whose image or text is low-quality, missing or unreadable.")
    per_period = trend.groupby("period", as_index=False)[["posts", "image_flagged", "text_flagged"]].sum()
    flagged = pd.DataFrame(
        {
            "period": list(per_period["period"]) * 2,
            "modality": ["image"] * len(per_period) + ["text"] * len(per_period),
            "share": list(per_period["image_flagged"] / per_period["posts"])
            + list(per_period["text_flagged"] / per_period["posts"]),
        }
    )
    flagged_chart = (
        alt.Chart(flagged)
        .mark_line(point=True)
        .encode(
            x=alt.X("period:T", title=granularity),
            y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="flagged share"),
            color="modality:N",
            tooltip=[alt.Tooltip("period:T"), "modality", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=220)
    )
    st.altair_chart(flagged_chart, width="stretch")
