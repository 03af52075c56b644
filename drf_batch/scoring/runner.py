"""The local scoring loop: read a posts Parquet file in record batches, score each, write each.

Memory stays flat with the size of the file because one record batch is read, scored and written at
a time. The only per-row state kept across batches is one byte per input row, which marks the rows
an earlier run already stored.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from drf_batch import __version__
from drf_batch.images import ImageLimits
from drf_batch.scoring.core import ROW_NUMBER_COLUMN, Bundle, ScoringContext, score_record_batch
from drf_batch.scoring.inputs import open_posts_file
from drf_batch.scoring.results import empty_scores, rejects_table
from drf_batch.storage import ScoreStore

logger = logging.getLogger(__name__)

ENGINE = "local"
CORRUPT_ROW_GROUP = "corrupt_row_group"


@dataclass(frozen=True)
class RunOptions:
    """Settings of one local scoring run.

    Args:
        batch_size: rows per record batch, which is also the unit of one database transaction.
        image_root: directory that relative image paths resolve against; None means the input
            file's directory.
        image_limits: image size limits and whether http(s) image paths may be fetched.
        inference_batch_size: posts per onnxruntime call.
        decode_threads: threads that decode and preprocess images.
        pause_after_batch_s: sleep after each committed batch; lets tests stop a run mid-way.
    """

    batch_size: int = 256
    image_root: Path | None = None
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    inference_batch_size: int = 32
    decode_threads: int = 2
    pause_after_batch_s: float = 0.0


@dataclass
class RunSummary:
    """Counts of one run, read back from the database when the run ends."""

    run_id: str
    input_path: str
    db_path: str
    bundle_id: str
    status: str
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    seconds: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    image_states: dict[str, int] = field(default_factory=dict)
    text_states: dict[str, int] = field(default_factory=dict)
    graphs: dict[str, int] = field(default_factory=dict)
    providers_requested: list[str] = field(default_factory=list)
    providers_used: list[str] = field(default_factory=list)

    @property
    def posts_per_second(self) -> float:
        processed = self.rows_scored + self.rows_rejected
        return processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ManifestOnlyBundle:
    """A stand-in for a bundle when every input row is already stored: it has no sessions.

    Lets a re-run of a finished file record its run without creating onnxruntime sessions.
    """

    bundle_id: str
    manifest: dict[str, Any]
    path: Path
    providers_requested: tuple[str, ...] = ()
    providers_used: tuple[str, ...] = ()
    sessions: dict[str, Any] = field(default_factory=dict)
    preprocessing: Any = None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("a manifest-only bundle cannot score; load the bundle with load_bundle")


def manifest_only_bundle_if_done(input_path: Path, bundle_path: Path, store: ScoreStore) -> ManifestOnlyBundle | None:
    """Return a `ManifestOnlyBundle` when the store already contains every row of `input_path` for
    the bundle in `bundle_path`, else None (also when the database or its tables do not exist)."""
    from drf_batch.bundle import read_manifest

    if not store.db_path.exists():
        return None
    raw, manifest = read_manifest(bundle_path)
    # The same id that load_bundle gives: the first 16 hex digits of the manifest's sha256.
    bundle_id = hashlib.sha256(raw).hexdigest()[:16]
    total_rows = pq.read_metadata(input_path).num_rows
    try:
        stored = store.stored_row_numbers(bundle_id=bundle_id, input_path=str(input_path.resolve()))
    except duckdb.CatalogException:
        return None
    if total_rows == 0 or len(stored) < total_rows:
        return None
    return ManifestOnlyBundle(bundle_id=bundle_id, manifest=manifest, path=bundle_path)


ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (rows processed in this batch, rows skipped in this batch)."""


def _bundle_fields(bundle: Bundle) -> dict[str, Any]:
    manifest: dict[str, Any] = dict(getattr(bundle, "manifest", {}) or {})
    thresholds = manifest.get("thresholds") or {}
    return {
        "name": str(manifest.get("name", "")),
        "path": str(getattr(bundle, "path", "")),
        "image_threshold": thresholds.get("image"),
        "text_threshold": thresholds.get("text"),
        "manifest": manifest,
    }


def _read_summary(store: ScoreStore, summary: RunSummary) -> None:
    with store.connection() as connection:
        row = connection.execute(
            "SELECT rows_in, rows_scored, rows_rejected, rows_skipped FROM runs WHERE run_id = ?",
            [summary.run_id],
        ).fetchone()
        summary.rows_in, summary.rows_scored, summary.rows_rejected, summary.rows_skipped = (
            int(value or 0) for value in row
        )
        summary.rejected_by_reason = dict(
            connection.execute(
                "SELECT reason_code, count(*) FROM rejects WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC",
                [summary.run_id],
            ).fetchall()
        )
        for attribute, column in (
            ("image_states", "image_state"),
            ("text_states", "text_state"),
            ("graphs", "graph"),
        ):
            counts = connection.execute(
                f"SELECT {column}, count(*) FROM scores WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC",
                [summary.run_id],
            ).fetchall()
            setattr(summary, attribute, dict(counts))


def score_file(
    input_path: Path,
    bundle: Bundle,
    store: ScoreStore,
    *,
    options: RunOptions = RunOptions(),
    providers_requested: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunSummary:
    """Score every row of a posts Parquet file into the store and return the run's summary.

    The schema is validated before the database is touched. Rows that an earlier run with the same
    bundle already stored (scored or rejected) are skipped, so a re-run after a crash finishes the
    remaining rows and a re-run of a finished file only reads the file's row count.
    `on_start` receives the file's row count before the first batch.
    """
    input_path = input_path.resolve()
    parquet_file, _ = open_posts_file(input_path)
    total_rows = parquet_file.metadata.num_rows
    stored_input_path = str(input_path)
    bundle_fields = _bundle_fields(bundle)

    store.initialize()
    store.register_bundle(
        bundle_id=bundle.bundle_id,
        name=bundle_fields["name"],
        path=bundle_fields["path"],
        labels=list(bundle.labels),
        image_threshold=bundle_fields["image_threshold"],
        text_threshold=bundle_fields["text_threshold"],
        manifest=bundle_fields["manifest"],
    )
    providers_used = [str(name) for name in getattr(bundle, "providers_used", [])]
    run_id = uuid.uuid4().hex
    summary = RunSummary(
        run_id=run_id,
        input_path=stored_input_path,
        db_path=str(store.db_path),
        bundle_id=bundle.bundle_id,
        status="running",
        providers_requested=list(providers_requested),
        providers_used=providers_used,
    )
    store.start_run(
        run_id=run_id,
        bundle_id=bundle.bundle_id,
        bundle_name=bundle_fields["name"],
        bundle_path=bundle_fields["path"],
        input_path=stored_input_path,
        engine=ENGINE,
        providers_requested=list(providers_requested),
        providers_used=providers_used,
        labels=list(bundle.labels),
        drf_batch_version=__version__,
    )
    if total_rows == 0:
        logger.warning("%s has no rows; nothing to score", input_path)
    if on_start is not None:
        on_start(total_rows)

    started = time.monotonic()
    stored = np.zeros(total_rows, dtype=bool)
    stored[store.stored_row_numbers(bundle_id=bundle.bundle_id, input_path=stored_input_path)] = True
    rows_skipped = int(stored.sum())
    if rows_skipped:
        logger.info(
            "%d of %d rows of %s are already stored for bundle %s; scoring the other %d",
            rows_skipped,
            total_rows,
            input_path,
            bundle.bundle_id,
            total_rows - rows_skipped,
        )

    image_root = options.image_root if options.image_root is not None else input_path.parent
    executor = ThreadPoolExecutor(max_workers=max(1, options.decode_threads), thread_name_prefix="drf-decode")
    context = ScoringContext(
        run_id=run_id,
        input_path=stored_input_path,
        image_root=image_root.resolve(),
        image_limits=options.image_limits,
        inference_batch_size=options.inference_batch_size,
        decode_threads=options.decode_threads,
        executor=executor,
    )
    try:
        if rows_skipped < total_rows:
            _score_batches(
                parquet_file,
                bundle,
                store,
                context=context,
                stored=stored,
                options=options,
                progress=progress,
            )
        elif progress is not None:
            progress(0, total_rows)
    except BaseException as error:
        summary.status = "failed"
        summary.seconds = time.monotonic() - started
        store.finish_run(
            run_id,
            status="failed",
            seconds=summary.seconds,
            rows_skipped=rows_skipped,
            error=f"{type(error).__name__}: {error}",
        )
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

    summary.status = "finished"
    summary.seconds = time.monotonic() - started
    store.finish_run(run_id, status="finished", seconds=summary.seconds, rows_skipped=rows_skipped)
    _read_summary(store, summary)
    return summary


def _score_batches(
    parquet_file: Any,
    bundle: Bundle,
    store: ScoreStore,
    *,
    context: ScoringContext,
    stored: np.ndarray,
    options: RunOptions,
    progress: ProgressCallback | None,
) -> None:
    """Score the file one row group at a time; rows of an undecodable row group become rejects."""
    row_group_start = 0
    for row_group in range(parquet_file.num_row_groups):
        row_group_rows = parquet_file.metadata.row_group(row_group).num_rows
        batches = parquet_file.iter_batches(
            batch_size=options.batch_size, row_groups=[row_group], use_threads=False
        )
        offset = row_group_start
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as error:
                _reject_row_range(
                    store,
                    bundle,
                    context=context,
                    row_numbers=[row for row in range(offset, row_group_start + row_group_rows) if not stored[row]],
                    reason=f"row group {row_group} of the input file could not be read: {error}",
                )
                if progress is not None:
                    progress(row_group_start + row_group_rows - offset, 0)
                break
            _score_one_batch(batch, offset, bundle, store, context=context, stored=stored, progress=progress)
            offset += batch.num_rows
            if options.pause_after_batch_s > 0:
                time.sleep(options.pause_after_batch_s)
        row_group_start += row_group_rows


def _score_one_batch(
    batch: pa.RecordBatch,
    offset: int,
    bundle: Bundle,
    store: ScoreStore,
    *,
    context: ScoringContext,
    stored: np.ndarray,
    progress: ProgressCallback | None,
) -> None:
    count = batch.num_rows
    pending = ~stored[offset : offset + count]
    pending_count = int(pending.sum())
    if pending_count == 0:
        if progress is not None:
            progress(0, count)
        return

    row_numbers = pa.array(np.arange(offset, offset + count, dtype=np.int64))
    batch = batch.append_column(ROW_NUMBER_COLUMN, row_numbers)
    if pending_count < count:
        batch = batch.filter(pa.array(pending))
    scores, rejects = score_record_batch(batch, bundle, context=context)
    store.write_batch(scores, rejects, run_id=context.run_id)
    if progress is not None:
        progress(pending_count, count - pending_count)


def _reject_row_range(
    store: ScoreStore,
    bundle: Bundle,
    *,
    context: ScoringContext,
    row_numbers: list[int],
    reason: str,
) -> None:
    """Store rows that could not be read from the file as `corrupt_row_group` rejects."""
    logger.error("%s: %s; its %d unread rows are stored as rejects", context.input_path, reason, len(row_numbers))
    if not row_numbers:
        return
    rejects = rejects_table(
        post_ids=[None] * len(row_numbers),
        bundle_id=bundle.bundle_id,
        run_id=context.run_id,
        input_path=context.input_path,
        row_numbers=row_numbers,
        reason_codes=[CORRUPT_ROW_GROUP] * len(row_numbers),
        reasons=[reason] * len(row_numbers),
        extras=[None] * len(row_numbers),
        rejected_at=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    store.write_batch(empty_scores(), rejects, run_id=context.run_id)
