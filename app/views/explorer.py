"""Post explorer: filter, page through, inspect and export scored posts."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from app import queries, thumbnails
from app.database import DatabaseBusyError, connect
from app.views.common import DashboardContext, format_count, format_number

SECTION = "Post explorer"
PAGE_SIZES = (10, 25, 50)
SORT_LABELS = {
    "confidence_asc": "confidence, lowest first",
    "confidence_desc": "confidence, highest first",
    "image_threshold_distance": "image quality, nearest the threshold first",
    "text_threshold_distance": "text quality, nearest the threshold first",
    "created_at_desc": "newest first",
    "post_id": "post_id",
}
# Exports of more rows than this get a warning, because the download is held in memory.
LARGE_EXPORT_ROWS = 1_000_000
EXTRA_VALUE_PREFIX = "filter_extra_value:"

FILTER_DEFAULTS: dict[str, Any] = {
    "filter_labels": [],
    "filter_confidence": (0.0, 1.0),
    "filter_image_states": [],
    "filter_text_states": [],
    "filter_image_quality_on": False,
    "filter_image_quality_min": 0.0,
    "filter_image_quality_max": 0.0,
    "filter_text_quality_on": False,
    "filter_text_quality_min": 0.0,
    "filter_text_quality_max": 0.0,
    "filter_text_contains": "",
    "filter_post_id": "",
    "filter_extra_keys": [],
    "explorer_sort": "confidence_asc",
    "explorer_page_size": PAGE_SIZES[0],
    "explorer_page": 1,
    "explorer_view": "Cards",
}


def persist_state() -> None:
    """Keep explorer widget values while another section is shown.

    Streamlit drops the state of widgets that a run does not draw. Assigning each value back to
    itself marks it as set by the app, so Streamlit keeps it.
    """
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and (key.startswith("filter_") or key.startswith("explorer_")):
            st.session_state[key] = st.session_state[key]


def _initialise_state() -> None:
    for key, value in FILTER_DEFAULTS.items():
        st.session_state.setdefault(key, value)


def reset_filters() -> None:
    for key, value in FILTER_DEFAULTS.items():
        st.session_state[key] = value
    for key in [key for key in st.session_state.keys() if str(key).startswith(EXTRA_VALUE_PREFIX)]:
        del st.session_state[key]


def set_filters_for_threshold(modality: str, low: float, high: float) -> None:
    """Switch to the explorer showing the posts whose `modality` quality lies in [low, high]."""
    reset_filters()
    st.session_state[f"filter_{modality}_quality_on"] = True
    st.session_state[f"filter_{modality}_quality_min"] = float(low)
    st.session_state[f"filter_{modality}_quality_max"] = float(high)
    st.session_state["explorer_sort"] = f"{modality}_threshold_distance"
    st.session_state["section"] = SECTION


def _quality_range(modality: str) -> tuple[float, float] | None:
    if not st.session_state[f"filter_{modality}_quality_on"]:
        return None
    low = float(st.session_state[f"filter_{modality}_quality_min"])
    high = float(st.session_state[f"filter_{modality}_quality_max"])
    return (min(low, high), max(low, high))


def _render_filters(context: DashboardContext) -> queries.PostFilter:
    with st.expander("Filters", expanded=True):
        first, second, third = st.columns(3)
        first.multiselect("Label", list(context.labels), key="filter_labels")
        first.slider("Confidence", 0.0, 1.0, step=0.01, key="filter_confidence")
        second.multiselect("Image state", list(queries.STATES), key="filter_image_states")
        second.multiselect("Text state", list(queries.STATES), key="filter_text_states")
        third.text_input("Text contains", key="filter_text_contains", help="Case-insensitive substring of the post text.")
        third.text_input("Post ID", key="filter_post_id", help="Exact post_id.")

        extra_keys: list[str] = context.query(queries.extra_keys, context.scope)
        third.multiselect(
            "Filter on passed-through columns",
            extra_keys,
            key="filter_extra_keys",
            help="Columns of the input file that scoring kept in `extra`, such as author_id or lang.",
        )

        for modality, column in (("image", first), ("text", second)):
            column.checkbox(f"Limit {modality} quality (log p)", key=f"filter_{modality}_quality_on")
            if st.session_state[f"filter_{modality}_quality_on"]:
                low_column, high_column = column.columns(2)
                low_column.number_input("from", key=f"filter_{modality}_quality_min", format="%.3f")
                high_column.number_input("to", key=f"filter_{modality}_quality_max", format="%.3f")

        extra_filters: list[tuple[str, tuple[str, ...]]] = []
        for key in st.session_state["filter_extra_keys"]:
            if key not in extra_keys:
                continue
            values: pd.DataFrame = context.query(queries.extra_values, context.scope, key)
            counts = dict(zip(values["value"], values["posts"]))
            chosen = st.multiselect(
                f"{key}",
                list(values["value"]),
                key=f"{EXTRA_VALUE_PREFIX}{key}",
                format_func=lambda value, counts=counts: f"{value} ({format_count(counts.get(value, 0))})",
                help=f"The {queries.MAX_EXTRA_VALUES} most frequent values.",
            )
            extra_filters.append((key, tuple(chosen)))

        st.button("Reset filters", on_click=reset_filters)

    confidence_low, confidence_high = st.session_state["filter_confidence"]
    return queries.PostFilter(
        scope=context.scope,
        labels=tuple(st.session_state["filter_labels"]),
        confidence_min=float(confidence_low),
        confidence_max=float(confidence_high),
        image_states=tuple(st.session_state["filter_image_states"]),
        text_states=tuple(st.session_state["filter_text_states"]),
        image_quality_range=_quality_range("image"),
        text_quality_range=_quality_range("text"),
        text_contains=st.session_state["filter_text_contains"].strip(),
        post_id=st.session_state["filter_post_id"].strip(),
        extra=tuple(extra_filters),
    )


def _resolve_input_path(input_path: str, db_path: Path) -> Path | None:
    candidate = Path(input_path)
    for option in ([candidate] if candidate.is_absolute() else [Path.cwd() / candidate, db_path.parent / candidate]):
        if option.is_file():
            return option
    return None


def _image_root(context: DashboardContext, input_path: str) -> Path | None:
    """Return --image-root, or else the input file's folder, which `drf-batch score` also defaults to."""
    if context.image_root is not None:
        return context.image_root
    resolved = _resolve_input_path(input_path, context.db_path)
    return resolved.parent if resolved is not None else None


def _image_bytes_for_page(
    context: DashboardContext, page: pd.DataFrame
) -> dict[tuple[str, int], tuple[str | None, bytes]]:
    """Read the embedded image bytes of a page's posts that have an image but no image_path."""
    wanted = page[page["image_path"].isna() & page["image_state"].isin(["ok", "low_quality", "unreadable"])]
    found: dict[tuple[str, int], tuple[str | None, bytes]] = {}
    for input_path, group in wanted.groupby("input_path"):
        resolved = _resolve_input_path(str(input_path), context.db_path)
        if resolved is None or not context.query(queries.input_has_image_bytes, str(resolved)):
            continue
        row_numbers = tuple(sorted(int(number) for number in group["row_number"].dropna()))
        data = context.query(queries.image_bytes_from_input, str(resolved), row_numbers)
        found.update({(str(input_path), number): value for number, value in data.items()})
    return found


def _thumbnail(
    context: DashboardContext, post: pd.Series, embedded: dict[tuple[str, int], tuple[str | None, bytes]]
) -> thumbnails.Thumbnail:
    if post["image_state"] == "missing":
        return thumbnails.Thumbnail(None, "no image")
    if isinstance(post["image_path"], str) and post["image_path"]:
        return thumbnails.thumbnail_from_path(post["image_path"], _image_root(context, str(post["input_path"])))
    key = (str(post["input_path"]), int(post["row_number"]))
    if key in embedded:
        post_id, data = embedded[key]
        if post_id != post["post_id"]:
            return thumbnails.Thumbnail(
                None, f"the input Parquet changed since scoring: row {key[1]} now has post_id {post_id!r}"
            )
        return thumbnails.thumbnail_from_bytes(data)
    return thumbnails.Thumbnail(None, "image bytes not found: the run's input Parquet is not readable from here")


STATE_BADGES = {"ok": "green", "low_quality": "orange", "missing": "gray", "unreadable": "red"}


def _state_badge(modality: str, state: Any) -> str:
    color = STATE_BADGES.get(str(state), "gray")
    return f":{color}-badge[{modality}: {str(state).replace('_', ' ')}]"


def _render_card(context: DashboardContext, post: pd.Series, thumbnail: thumbnails.Thumbnail) -> None:
    with st.container(border=True):
        image_column, text_column, numbers_column = st.columns([1.1, 2.2, 1.5])

        with image_column:
            if thumbnail.png is not None:
                st.image(thumbnail.png, width=180)
            else:
                st.caption(thumbnail.problem or "no image")

        with text_column:
            st.markdown(
                f"**{post['label']}** · confidence {format_number(post['confidence'], 3)} · graph `{post['graph']}`  \n"
                f"{_state_badge('image', post['image_state'])} {_state_badge('text', post['text_state'])}"
            )
            # Post text and passed-through values come from the input file, so they are shown as
            # plain text, never as Markdown that could load remote content.
            st.text(post["text"] if isinstance(post["text"], str) else "(no text)")
            st.text(f"post_id: {post['post_id']}   row {post['row_number']} of {post['input_path']}")
            if isinstance(post["extra"], str) and post["extra"] not in ("", "{}"):
                st.text("extra: " + ", ".join(f"{key}={value}" for key, value in json.loads(post["extra"]).items()))
            for modality in ("image", "text"):
                error = post[f"{modality}_error"]
                if isinstance(error, str) and error:
                    st.text(f"{modality} error: {error}")

        with numbers_column:
            probabilities = post["probs"] if post["probs"] is not None else []
            for label, probability in zip(context.labels, probabilities):
                st.progress(min(max(float(probability), 0.0), 1.0), text=f"{label} {float(probability):.3f}")
            st.markdown(
                "Branch weights: "
                f"paired {format_number(post['w_paired'], 3)} · image {format_number(post['w_image'], 3)} · "
                f"text {format_number(post['w_text'], 3)}  \n"
                f"Image log p {format_number(post['image_quality'], 1)} "
                f"(from text {format_number(post['image_quality_recovered'], 1)})  \n"
                f"Text log p {format_number(post['text_quality'], 1)} "
                f"(from image {format_number(post['text_quality_recovered'], 1)})"
            )


def _render_export(context: DashboardContext, post_filter: queries.PostFilter, total: int) -> None:
    st.subheader("Export")
    if total > LARGE_EXPORT_ROWS:
        st.warning(f"The filtered view has {format_count(total)} rows; the export file is held in memory for the download.")
    columns = st.columns(4)
    for column, file_format in zip(columns, ("csv", "parquet")):
        if column.button(f"Prepare {file_format.upper()}", key=f"export_{file_format}", disabled=total == 0):
            with st.spinner(f"Writing {format_count(total)} rows as {file_format.upper()}..."):
                _prepare_export(context, post_filter, file_format)

    prepared = st.session_state.get("explorer_export")
    if prepared is not None and prepared["filter"] == post_filter and Path(prepared["path"]).is_file():
        columns[2].download_button(
            f"Download {prepared['format'].upper()} ({format_count(prepared['rows'])} rows)",
            data=Path(prepared["path"]).read_bytes(),
            file_name=f"drf-batch-posts.{prepared['format']}",
            mime="text/csv" if prepared["format"] == "csv" else "application/vnd.apache.parquet",
            key="export_download",
        )


def _prepare_export(context: DashboardContext, post_filter: queries.PostFilter, file_format: str) -> None:
    directory = Path(st.session_state.setdefault("explorer_export_dir", tempfile.mkdtemp(prefix="drf-batch-export-")))
    destination = directory / f"posts.{file_format}"
    try:
        with connect(context.db_path) as connection:
            rows = queries.export_posts(
                connection, post_filter, st.session_state["explorer_sort"], context.thresholds, destination, file_format
            )
    except DatabaseBusyError:
        st.warning("A scoring run holds the database lock; try the export again in a few seconds.")
        return
    except duckdb.Error as error:
        st.error(f"Export failed: {error}")
        return
    st.session_state["explorer_export"] = {
        "filter": post_filter, "path": str(destination), "format": file_format, "rows": rows,
    }  # fmt: skip


def render(context: DashboardContext) -> None:
    st.header(SECTION)
    _initialise_state()
    post_filter = _render_filters(context)

    if st.session_state.get("explorer_last_filter") != post_filter:
        st.session_state["explorer_page"] = 1
        st.session_state["explorer_last_filter"] = post_filter

    total: int = context.query(queries.count_posts, post_filter)
    controls = st.columns([2, 1, 1, 1])
    controls[0].selectbox("Sort by", list(SORT_LABELS), format_func=SORT_LABELS.__getitem__, key="explorer_sort")
    controls[1].selectbox("Posts per page", list(PAGE_SIZES), key="explorer_page_size")
    page_count = max(1, math.ceil(total / st.session_state["explorer_page_size"]))
    if st.session_state["explorer_page"] > page_count:
        st.session_state["explorer_page"] = page_count
    controls[2].number_input("Page", min_value=1, max_value=page_count, step=1, key="explorer_page")
    controls[3].radio("View", ["Cards", "Table"], key="explorer_view", horizontal=True)

    page_size = int(st.session_state["explorer_page_size"])
    page_number = int(st.session_state["explorer_page"])
    st.markdown(f"**{format_count(total)} posts match** · page {page_number} of {format_count(page_count)}")
    if total == 0:
        st.info("No post matches these filters.")
        return

    page: pd.DataFrame = context.query(
        queries.post_page,
        post_filter,
        st.session_state["explorer_sort"],
        context.thresholds,
        page_size,
        (page_number - 1) * page_size,
    )
    if st.session_state["explorer_view"] == "Table":
        st.dataframe(page, hide_index=True, width="stretch")
    else:
        embedded = _image_bytes_for_page(context, page)
        for _, post in page.iterrows():
            _render_card(context, post, _thumbnail(context, post, embedded))

    _render_export(context, post_filter, total)
