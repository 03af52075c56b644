"""Quality: histograms of the per-modality quality values with the bundle's calibrated thresholds.

Quality values are log densities (log p) of a post's features under the training distribution of
that modality. A value below the bundle's threshold makes the modality `low_quality`.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import queries
from app.views import explorer
from app.views.common import DashboardContext, format_count, format_number

HISTOGRAM_BINS = 60
STATE_COLORS = alt.Scale(domain=list(queries.STATES), range=["#4c9a2a", "#f28e2b", "#9d9d9d", "#d62728"])
# Half-width of the "near the threshold" band, as a fraction of the 5th-95th percentile spread
# (percentiles estimated from the histogram bins).
NEAR_THRESHOLD_FRACTION = 0.05

DESCRIPTIONS = {
    "image": "Image quality: log p of the image feature under the image distribution.",
    "text": "Text quality: log p of the text feature under the text distribution.",
    "image_recovered": "Image recovered from text: log p of the text converted into image space.",
    "text_recovered": "Text recovered from image: log p of the image converted into text space.",
}


def histogram_percentiles(histogram: pd.DataFrame, lower: float, upper: float) -> tuple[float, float]:
    """Estimate two percentiles from binned counts, to the precision of one bin width."""
    per_bin = histogram.groupby(["bin_start", "bin_end"], as_index=False)["posts"].sum().sort_values("bin_start")
    cumulative = per_bin["posts"].cumsum() / per_bin["posts"].sum()
    lower_index = int((cumulative >= lower).to_numpy().argmax())
    upper_index = int((cumulative >= upper).to_numpy().argmax())
    return float(per_bin["bin_start"].iloc[lower_index]), float(per_bin["bin_end"].iloc[upper_index])


def near_threshold_band(threshold: float, spread: tuple[float, float] | None) -> tuple[float, float]:
    """Return the quality range around `threshold` that counts as "near" it."""
    width = abs(spread[1] - spread[0]) if spread is not None else 0.0
    # When every value is equal the spread is zero, so fall back to 1% of the threshold's size.
    half_width = max(width * NEAR_THRESHOLD_FRACTION, abs(threshold) * 0.01, 1e-3)
    return threshold - half_width, threshold + half_width


def _histogram_chart(histogram: pd.DataFrame, threshold: float | None, title: str) -> alt.LayerChart | alt.Chart:
    bars = (
        alt.Chart(histogram)
        .mark_bar()
        .encode(
            x=alt.X("bin_start:Q", bin="binned", title="log p"),
            x2="bin_end:Q",
            y=alt.Y("posts:Q", stack=True, title="posts"),
            color=alt.Color("state:N", scale=STATE_COLORS),
            tooltip=[alt.Tooltip("bin_start:Q", format=".1f"), alt.Tooltip("bin_end:Q", format=".1f"),
                     "state", alt.Tooltip("posts:Q", format=",")],
        )
        .properties(height=240, title=title)
    )  # fmt: skip
    if threshold is None:
        return bars
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        .mark_rule(color="red", strokeWidth=2, strokeDash=[6, 3])
        .encode(x="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", format=".2f")])
    )
    return bars + rule


def _show_near_threshold(modality: str, low: float, high: float) -> None:
    explorer.set_filters_for_threshold(modality, low, high)


def _render_modality(context: DashboardContext, modality: str, threshold: float | None) -> None:
    histogram: pd.DataFrame = context.query(queries.quality_histogram, context.scope, modality, HISTOGRAM_BINS)
    if histogram.empty:
        st.info(f"No {modality} quality values: no post in this selection has a readable {modality}.")
        return

    st.altair_chart(_histogram_chart(histogram, threshold, DESCRIPTIONS[modality]), width="stretch")
    if threshold is None:
        st.caption(f"The bundle records no {modality} threshold.")
        return

    low, high = near_threshold_band(threshold, histogram_percentiles(histogram, 0.05, 0.95))
    near = context.query(queries.count_in_quality_range, context.scope, modality, low, high)
    st.caption(
        f"Threshold {format_number(threshold)} (red line). {format_count(near)} posts lie within "
        f"{format_number(high - threshold)} of it."
    )
    st.button(
        f"Show {modality} posts near the threshold",
        key=f"near_threshold_{modality}",
        on_click=_show_near_threshold,
        args=(modality, low, high),
        disabled=near == 0,
    )


def render(context: DashboardContext) -> None:
    st.header("Quality")
    image_threshold, text_threshold = context.thresholds
    image_column, text_column = st.columns(2)
    with image_column:
        _render_modality(context, "image", image_threshold)
    with text_column:
        _render_modality(context, "text", text_threshold)

    with st.expander("Recovered quality (the other modality converted into this one's feature space)"):
        recovered_image, recovered_text = st.columns(2)
        with recovered_image:
            _render_recovered(context, "image_recovered", image_threshold)
        with recovered_text:
            _render_recovered(context, "text_recovered", text_threshold)


def _render_recovered(context: DashboardContext, quality: str, threshold: float | None) -> None:
    histogram: pd.DataFrame = context.query(queries.quality_histogram, context.scope, quality, HISTOGRAM_BINS)
    if histogram.empty:
        st.info("No values in this selection.")
        return
    st.altair_chart(_histogram_chart(histogram, threshold, DESCRIPTIONS[quality]), width="stretch")
