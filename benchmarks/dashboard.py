"""Time every dashboard query on a synthetic scores table of 10 million rows.

Usage: python benchmarks/dashboard.py [--rows N] [--workdir DIR] [--output docs/benchmarks-dashboard.md]

The database is generated with DuckDB SQL (benchmarks/dashboard_data.py) into a temporary folder,
or reused from --workdir when that folder already contains one of the same size. Each query opens and closes its
own read-only connection, as the dashboard does, so the timings include connecting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app import queries  # noqa: E402
from app.database import connect  # noqa: E402
from benchmarks.dashboard_data import IMAGE_THRESHOLD, TEXT_THRESHOLD, build_synthetic_database  # noqa: E402

REPEATS = 3


def time_query(db_path: Path, function: Callable[..., Any], *args: Any) -> list[float]:
    """Return the wall-clock seconds of REPEATS runs of `function(connection, *args)`."""
    seconds: list[float] = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        with connect(db_path) as connection:
            function(connection, *args)
        seconds.append(time.perf_counter() - started)
    return seconds


def benchmark_cases(rows: int) -> list[tuple[str, str, Callable[..., Any], tuple[Any, ...]]]:
    scope = queries.Scope(bundle_id="synthbundlea0001")
    everything = queries.PostFilter(scope=scope)
    combined = queries.PostFilter(
        scope=scope, labels=("positive", "negative"), confidence_min=0.5, image_states=("low_quality",)
    )
    by_language = queries.PostFilter(scope=scope, extra=(("lang", ("de",)),))
    by_author = queries.PostFilter(scope=scope, extra=(("author_id", ("author-123",)),))
    by_text = queries.PostFilter(scope=scope, text_contains="number 4242")
    near_image = queries.PostFilter(scope=scope, image_quality_range=(IMAGE_THRESHOLD - 10, IMAGE_THRESHOLD + 10))
    thresholds = (IMAGE_THRESHOLD, TEXT_THRESHOLD)
    deep_offset = rows // 2

    return [
        ("start", "check tables and columns", queries.missing_schema, ()),
        ("start", "list bundles", queries.bundles, ()),
        ("start", "list runs", queries.runs, ()),
        ("overview", "posts by modality, state and label", queries.state_label_counts, (scope,)),
        ("overview", "rejected rows", queries.rejected_count, (scope,)),
        ("trends", "created_at span", queries.created_at_span, (scope,)),
        ("trends", "labels per day", queries.label_trend, (scope, "day")),
        ("quality", "image quality histogram", queries.quality_histogram, (scope, "image", 60)),
        ("quality", "text quality histogram", queries.quality_histogram, (scope, "text", 60)),
        ("quality", "posts near the image threshold", queries.count_in_quality_range, (scope, "image", IMAGE_THRESHOLD - 10, IMAGE_THRESHOLD + 10)),
        ("explorer", "passed-through column names", queries.extra_keys, (scope,)),
        ("explorer", "values of lang", queries.extra_values, (scope, "lang")),
        ("explorer", "values of author_id (top 200)", queries.extra_values, (scope, "author_id")),
        ("explorer", "count, no filter", queries.count_posts, (everything,)),
        ("explorer", "count, label + state + confidence", queries.count_posts, (combined,)),
        ("explorer", "count, lang = de", queries.count_posts, (by_language,)),
        ("explorer", "count, author_id = author-123", queries.count_posts, (by_author,)),
        ("explorer", "count, text contains", queries.count_posts, (by_text,)),
        ("explorer", "page 1, lowest confidence first", queries.post_page, (everything, "confidence_asc", thresholds, 10, 0)),
        ("explorer", f"page at offset {deep_offset:,}, by post_id", queries.post_page, (everything, "post_id", thresholds, 10, deep_offset)),
        ("explorer", "page 1, lang = de, lowest confidence first", queries.post_page, (by_language, "confidence_asc", thresholds, 10, 0)),
        ("explorer", "page 1 near the image threshold", queries.post_page, (near_image, "image_threshold_distance", thresholds, 10, 0)),
        ("runs", "reject reasons", queries.reject_reasons, (None,)),
        ("runs", "rejects page", queries.reject_page, (None, None, 25, 0)),
        ("runs", "compare runs: labels and states of shared posts", queries.compare_runs, ("run-a", "run-b")),
        ("runs", "compare runs: disagreements page", queries.disagreement_page, ("run-a", "run-b", 25, 0)),
    ]  # fmt: skip


def time_export(db_path: Path, workdir: Path) -> list[tuple[str, float, int]]:
    scope = queries.Scope(bundle_id="synthbundlea0001")
    by_language = queries.PostFilter(scope=scope, extra=(("lang", ("de",)),))
    results = []
    for file_format in ("parquet", "csv"):
        destination = workdir / f"export.{file_format}"
        started = time.perf_counter()
        with connect(db_path) as connection:
            exported = queries.export_posts(
                connection, by_language, "confidence_asc", (IMAGE_THRESHOLD, TEXT_THRESHOLD), destination, file_format
            )
        results.append((file_format, time.perf_counter() - started, exported))
        destination.unlink()
    return results


SECTIONS = ("Overview", "Trends", "Quality", "Post explorer", "Runs and rejects")


def time_sections(db_path: Path) -> list[tuple[str, float, float]]:
    """Render each dashboard section with Streamlit's AppTest, first with cold caches, then again.

    Returns (section, first render seconds, repeated render seconds) per section.
    """
    from streamlit.testing.v1 import AppTest

    os.environ["DRF_BATCH_DASHBOARD_DB"] = str(db_path)
    app = AppTest.from_file(str(REPO_ROOT / "app" / "dashboard.py"), default_timeout=600)
    results = []
    for index, section in enumerate(SECTIONS):
        if index > 0:
            app.sidebar.radio(key="section").set_value(section)
        started = time.perf_counter()
        app.run()
        first = time.perf_counter() - started
        if app.exception:
            raise RuntimeError(f"section {section} failed: {app.exception}")
        started = time.perf_counter()
        app.run()
        results.append((section, first, time.perf_counter() - started))
    return results


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    description = (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}, {platform.system()} {platform.release()} "
        f"(1-minute load average {load:.1f} when the report was written)"
    )
    return description


def load_note() -> str:
    """Return a warning sentence when other processes kept the CPUs busy, else an empty string."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load <= (os.cpu_count() or 1):
        return ""
    return " Other processes shared the CPUs during the run, so these times are higher than on an idle machine of this size."


def render_report(
    rows: int, build_seconds: float | None, file_bytes: int, timings: list[tuple[str, str, list[float]]],
    exports: list[tuple[str, float, int]], sections: list[tuple[str, float, float]],
) -> str:
    lines = [
        "# Dashboard query timings",
        "",
        f"Measured on {datetime.now(timezone.utc):%Y-%m-%d} with `python benchmarks/dashboard.py --rows {rows}` on "
        f"{machine_description()}, with DuckDB {duckdb.__version__} and Python {platform.python_version()}."
        + load_note(),
        "",
        f"The synthetic database holds {rows:,} scores of bundle A, {rows // 10:,} scores of bundle B for the same "
        f"posts (for the run comparison) and {max(rows // 200, 3):,} rejects; the file is {file_bytes / 2**30:.2f} GiB."
        + (f" Generating it with DuckDB SQL took {build_seconds:.0f} s." if build_seconds is not None else ""),
        "Each query opens its own read-only connection and closes it, as the dashboard does, so every time "
        f"includes connecting. Times are the median and the maximum of {REPEATS} runs; the dashboard caches "
        "results per query until the file changes, so a repeated page view costs none of this.",
        "",
        "| section | query | median (s) | max (s) |",
        "| --- | --- | ---: | ---: |",
    ]
    for section, name, seconds in timings:
        lines.append(f"| {section} | {name} | {statistics.median(seconds):.3f} | {max(seconds):.3f} |")
    lines += [
        "",
        "Whole sections rendered by Streamlit's AppTest in one process (every query of the section, the "
        "sidebar and Streamlit's own work; the explorer with its default filters and 10 cards):",
        "",
        "| section | first render, cold cache (s) | repeated render (s) |",
        "| --- | ---: | ---: |",
    ]
    for section, first, repeated in sections:
        lines.append(f"| {section} | {first:.2f} | {repeated:.2f} |")
    lines += [
        "",
        "Export of the filtered view (lang = de, written by DuckDB's COPY):",
        "",
        "| format | rows | seconds |",
        "| --- | ---: | ---: |",
    ]
    for file_format, seconds, exported in exports:
        lines.append(f"| {file_format} | {exported:,} | {seconds:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="Scores of bundle A to generate.")
    parser.add_argument("--workdir", type=Path, default=None, help="Folder for the generated database [default: a temporary folder].")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks-dashboard.md", help="Markdown report to write.")
    options = parser.parse_args()

    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="drf-batch-dashboard-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / f"scores-{options.rows}.duckdb"
    build_seconds: float | None = None
    if not db_path.is_file():
        started = time.perf_counter()
        build_synthetic_database(db_path, rows=options.rows)
        build_seconds = time.perf_counter() - started
        print(f"built {db_path} in {build_seconds:.1f} s", flush=True)

    timings = []
    for section, name, function, args in benchmark_cases(options.rows):
        seconds = time_query(db_path, function, *args)
        timings.append((section, name, seconds))
        print(f"{section:9} {name:45} median {statistics.median(seconds):.3f} s", flush=True)
    exports = time_export(db_path, workdir)
    sections = time_sections(db_path)
    for section, first, repeated in sections:
        print(f"section {section:20} first {first:.2f} s, repeated {repeated:.2f} s", flush=True)

    report = render_report(options.rows, build_seconds, db_path.stat().st_size, timings, exports, sections)
    options.output.write_text(report)
    print(f"wrote {options.output}")


if __name__ == "__main__":
    main()
