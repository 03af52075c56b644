"""The scoring core: one Arrow record batch of posts in, one table of scores and one of rejects out.

`score_record_batch` keeps no state between calls, so a local loop and a distributed engine can call
it unchanged. Each post goes to the graph that matches the modalities it has: image and text to
`paired`, an image alone to `image_only`, a text alone to `text_only`. A post whose image cannot be
read but whose text can is scored on the text, with image_state 'unreadable' and the reason in
image_error. A post with no usable modality becomes a reject.

Images are decoded and preprocessed in a thread pool while the graph runs on the posts already
decoded. Texts are sorted by token count before they are cut into inference batches, so each batch
is padded only to the longest text in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from drf_batch.images import ImageLimits, ImageLoadError, load_image, preprocess_image, read_image_bytes
from drf_batch.scoring.inputs import CREATED_AT, IMAGE_BYTES, IMAGE_PATH, KNOWN_COLUMNS, POST_ID, TEXT
from drf_batch.scoring.results import (
    SCORES_SCHEMA,
    empty_rejects,
    empty_scores,
    nullable_float,
    rejects_table,
    to_json,
)
from drf_batch.texts import decode_text_bytes, normalize_text

logger = logging.getLogger(__name__)

ROW_NUMBER_COLUMN = "__row_number"
"""Optional int64 column that carries each row's position in the input file."""

PAIRED = "paired"
IMAGE_ONLY = "image_only"
TEXT_ONLY = "text_only"
GRAPH_OUTPUTS = ["probs", "quality", "branch_weights", "low_quality"]
DECODE_WINDOWS_AHEAD = 2

OK = "ok"
LOW_QUALITY = "low_quality"
MISSING = "missing"
UNREADABLE = "unreadable"


class Bundle(Protocol):
    """What the scoring core needs from a loaded model bundle (see `drf_batch.bundle`)."""

    bundle_id: str
    labels: Sequence[str]
    sessions: dict[str, Any]
    preprocessing: Any

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ScoringContext:
    """Per-run settings for `score_record_batch`.

    Args:
        run_id: written into every score and reject row.
        input_path: the input file as stored in the database; with the row number it identifies a row.
        image_root: directory that relative `image_path` values resolve against.
        image_limits: size limits and the URL switch passed to `drf_batch.images`.
        inference_batch_size: posts per graph call.
        decode_threads: image decoding threads, used when `executor` is None.
        executor: a thread pool to reuse across batches; None creates one per call.
        first_row_number: row number of the batch's first row when it has no `__row_number` column.
        use_io_binding: bind inputs and outputs through IOBinding; None enables it on CUDA sessions.
    """

    run_id: str
    input_path: str
    image_root: Path | None = None
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    inference_batch_size: int = 32
    decode_threads: int = 2
    executor: Executor | None = None
    first_row_number: int = 0
    use_io_binding: bool | None = None


@dataclass
class _ImageResult:
    pixels: np.ndarray | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class _GraphOutputs:
    """Per-row graph outputs of one batch, filled in as the graphs run."""

    probs: np.ndarray
    quality: np.ndarray
    branch_weights: np.ndarray
    low_quality: np.ndarray
    graph: list[str | None]
    failure: list[str | None]

    @classmethod
    def allocate(cls, rows: int, classes: int) -> _GraphOutputs:
        return cls(
            probs=np.full((rows, classes), np.nan, dtype=np.float64),
            quality=np.full((rows, 4), np.nan, dtype=np.float64),
            branch_weights=np.full((rows, 3), np.nan, dtype=np.float64),
            low_quality=np.zeros((rows, 2), dtype=bool),
            graph=[None] * rows,
            failure=[None] * rows,
        )


def _load_pixels(
    source: bytes | str, *, context: ScoringContext, preprocessing: Any
) -> _ImageResult:
    """Load and preprocess one image; every failure becomes an error code, never an exception."""
    try:
        if isinstance(source, bytes):
            image = load_image(source, limits=context.image_limits)
        else:
            root = context.image_root if context.image_root is not None else Path.cwd()
            raw = read_image_bytes(source, root=root, limits=context.image_limits)
            image = load_image(raw, limits=context.image_limits)
        return _ImageResult(pixels=preprocess_image(image, preprocessing))
    except ImageLoadError as error:
        return _ImageResult(error_code=error.code, error_message=str(error))
    except Exception as error:  # noqa: BLE001 - one bad image must never stop the batch
        return _ImageResult(error_code="decode_failed", error_message=f"{type(error).__name__}: {error}")


def _column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return None if index < 0 else batch.column(index)


def _post_ids(batch: pa.RecordBatch) -> list[str | None]:
    column = batch.column(batch.schema.get_field_index(POST_ID))
    values = pc.cast(column, pa.string()).to_pylist()
    return [value if value is not None and value.strip() else None for value in values]


def _row_numbers(batch: pa.RecordBatch, context: ScoringContext) -> np.ndarray:
    column = _column(batch, ROW_NUMBER_COLUMN)
    if column is not None:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.arange(batch.num_rows, dtype=np.int64) + context.first_row_number


def _texts(batch: pa.RecordBatch) -> list[str | None]:
    """Decode and normalise texts; binary columns and invalid UTF-8 go through `decode_text_bytes`."""
    column = _column(batch, TEXT)
    if column is None or pa.types.is_null(column.type):
        return [None] * batch.num_rows
    as_binary = pc.cast(column, pa.large_binary()) if not pa.types.is_large_binary(column.type) else column
    texts: list[str | None] = []
    for raw in as_binary.to_pylist():
        texts.append(None if raw is None else normalize_text(decode_text_bytes(raw)))
    return texts


def _image_sources(batch: pa.RecordBatch) -> tuple[list[bytes | str | None], list[str | None]]:
    """Return each row's image source (bytes win over a path) and the path as given."""
    paths_column = _column(batch, IMAGE_PATH)
    bytes_column = _column(batch, IMAGE_BYTES)
    rows = batch.num_rows
    paths = [None] * rows if paths_column is None else paths_column.to_pylist()
    blobs = [None] * rows if bytes_column is None else bytes_column.to_pylist()
    sources: list[bytes | str | None] = []
    for path, blob in zip(paths, blobs):
        if blob is not None:
            sources.append(bytes(blob))
        elif path is not None and path.strip():
            sources.append(path.strip())
        else:
            sources.append(None)
    return sources, [path if path is not None and path.strip() else None for path in paths]


def _created_at(batch: pa.RecordBatch) -> pa.Array:
    """Return `created_at` as naive UTC microsecond timestamps; unparseable values become null."""
    column = _column(batch, CREATED_AT)
    target = pa.timestamp("us")
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(batch.num_rows, target)
    if pa.types.is_timestamp(column.type):
        if column.type.tz is not None:
            column = pc.cast(column, pa.timestamp(column.type.unit, tz="UTC"))
            column = pc.local_timestamp(column)
        return pc.cast(column, target)
    if pa.types.is_date(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("s")), target)
    parsed: list[datetime | None] = []
    for value in column.to_pylist():
        parsed.append(_parse_timestamp(value))
    return pa.array(parsed, target)


def _parse_timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value.strip())
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        # OverflowError: the UTC time falls outside datetime's range, e.g. 9999-12-31T23:00-05:00.
        return None
    return stamp


def _extras(batch: pa.RecordBatch) -> list[str | None]:
    names = [
        name for name in batch.schema.names if name not in KNOWN_COLUMNS and name != ROW_NUMBER_COLUMN
    ]
    if not names:
        return [None] * batch.num_rows
    return [to_json(row) for row in batch.select(names).to_pylist()]


def _text_chunks(lengths: np.ndarray, rows: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Cut rows into chunks of `chunk_size`, sorted by token count so padding stays short."""
    ordered = sorted(rows, key=lambda row: int(lengths[row]))
    return [ordered[start : start + chunk_size] for start in range(0, len(ordered), chunk_size)]


def _run_session(session: Any, feeds: dict[str, np.ndarray], *, use_io_binding: bool) -> list[np.ndarray]:
    if not use_io_binding:
        return session.run(GRAPH_OUTPUTS, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in GRAPH_OUTPUTS:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


class _GraphRunner:
    """Runs chunks of rows through one bundle's graphs and writes the outputs into `_GraphOutputs`."""

    def __init__(
        self,
        bundle: Bundle,
        context: ScoringContext,
        outputs: _GraphOutputs,
        token_ids: np.ndarray,
        token_mask: np.ndarray,
        token_row: dict[int, int],
    ) -> None:
        self.bundle = bundle
        self.outputs = outputs
        self.token_ids = token_ids
        self.token_mask = token_mask
        self.token_row = token_row
        self.use_io_binding = context.use_io_binding

    def _io_binding_for(self, session: Any) -> bool:
        if self.use_io_binding is not None:
            return self.use_io_binding
        providers = session.get_providers() if hasattr(session, "get_providers") else []
        return "CUDAExecutionProvider" in providers

    def _feeds(self, graph: str, rows: list[int], pixels: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        if graph in (PAIRED, IMAGE_ONLY):
            feeds["pixel_values"] = np.stack([pixels[row] for row in rows]).astype(np.float32, copy=False)
        if graph in (PAIRED, TEXT_ONLY):
            positions = [self.token_row[row] for row in rows]
            mask = self.token_mask[positions]
            keep = mask.any(axis=0)
            feeds["input_ids"] = np.ascontiguousarray(self.token_ids[positions][:, keep], dtype=np.int64)
            feeds["attention_mask"] = np.ascontiguousarray(mask[:, keep], dtype=np.int64)
        return feeds

    def run(self, graph: str, rows: list[int], pixels: dict[int, np.ndarray]) -> None:
        """Run `rows` through `graph`; when the call fails, retry row by row to isolate the cause."""
        if not rows:
            return
        session = self.bundle.sessions[graph]
        try:
            results = _run_session(
                session, self._feeds(graph, rows, pixels), use_io_binding=self._io_binding_for(session)
            )
        except Exception as error:  # noqa: BLE001 - a failing post must not stop the others
            if len(rows) == 1:
                self.outputs.failure[rows[0]] = f"{graph} graph failed: {type(error).__name__}: {error}"
                return
            for row in rows:
                self.run(graph, [row], pixels)
            return
        probs, quality, branch_weights, low_quality = results
        for position, row in enumerate(rows):
            if not np.isfinite(probs[position]).all():
                self.outputs.failure[row] = f"{graph} graph returned non-finite probabilities {probs[position].tolist()}"
                continue
            self.outputs.probs[row] = probs[position]
            self.outputs.quality[row] = quality[position]
            self.outputs.branch_weights[row] = branch_weights[position]
            self.outputs.low_quality[row] = low_quality[position]
            self.outputs.graph[row] = graph


def score_record_batch(
    batch: pa.RecordBatch, bundle: Bundle, *, context: ScoringContext
) -> tuple[pa.Table, pa.Table]:
    """Score one record batch of posts and return (scores, rejects) tables.

    Every row of `batch` appears in exactly one of the two returned tables. Duplicate post_ids are
    not detected here, because that needs the rows of other batches; `ScoreStore.write_batch`
    turns them into rejects.
    """
    rows = batch.num_rows
    if rows == 0:
        return empty_scores(), empty_rejects()
    started_at = datetime.now(timezone.utc).replace(tzinfo=None)

    post_ids = _post_ids(batch)
    row_numbers = _row_numbers(batch, context)
    texts = _texts(batch)
    image_sources, image_paths = _image_sources(batch)
    extras = _extras(batch)

    valid = [post_id is not None for post_id in post_ids]
    image_rows = [row for row in range(rows) if valid[row] and image_sources[row] is not None]
    text_rows = [row for row in range(rows) if valid[row] and texts[row] is not None]

    # Start image decoding first, so that it runs while the text-only posts are being scored.
    own_executor = context.executor is None
    executor = context.executor or ThreadPoolExecutor(
        max_workers=max(1, context.decode_threads), thread_name_prefix="drf-decode"
    )
    try:
        chunk_size = max(1, context.inference_batch_size)
        windows = [image_rows[start : start + chunk_size] for start in range(0, len(image_rows), chunk_size)]
        futures: dict[int, Future[_ImageResult]] = {}

        def submit(window: list[int]) -> None:
            for row in window:
                futures[row] = executor.submit(
                    _load_pixels, image_sources[row], context=context, preprocessing=bundle.preprocessing
                )

        # Decoding runs at most DECODE_WINDOWS_AHEAD windows ahead of inference, which bounds the
        # preprocessed pixels held in memory to a few windows instead of the whole batch.
        for window in windows[:DECODE_WINDOWS_AHEAD]:
            submit(window)

        if text_rows:
            token_ids, token_mask = bundle.tokenize([texts[row] for row in text_rows])
            token_ids = np.asarray(token_ids, dtype=np.int64)
            token_mask = np.asarray(token_mask, dtype=np.int64)
        else:
            token_ids = np.zeros((0, 0), dtype=np.int64)
            token_mask = np.zeros((0, 0), dtype=np.int64)
        token_row = {row: position for position, row in enumerate(text_rows)}
        token_lengths = np.zeros(rows, dtype=np.int64)
        for row, position in token_row.items():
            token_lengths[row] = int(token_mask[position].sum())

        outputs = _GraphOutputs.allocate(rows, len(bundle.labels))
        runner = _GraphRunner(bundle, context, outputs, token_ids, token_mask, token_row)

        has_image = set(image_rows)
        text_only_rows = [row for row in text_rows if row not in has_image]
        for chunk in _text_chunks(token_lengths, text_only_rows, chunk_size):
            runner.run(TEXT_ONLY, chunk, {})

        # Consume decoded images in submission order, one window at a time, so inference on a
        # window overlaps with decoding of the next ones.
        image_results: dict[int, _ImageResult] = {}
        fallback_text_rows: list[int] = []
        for index, window in enumerate(windows):
            if index + DECODE_WINDOWS_AHEAD < len(windows):
                submit(windows[index + DECODE_WINDOWS_AHEAD])
            pixels: dict[int, np.ndarray] = {}
            for row in window:
                result = futures.pop(row).result()
                image_results[row] = result
                if result.pixels is not None:
                    pixels[row] = result.pixels
            paired = [row for row in window if row in pixels and texts[row] is not None]
            image_only = [row for row in window if row in pixels and texts[row] is None]
            fallback_text_rows.extend(row for row in window if row not in pixels and texts[row] is not None)
            for chunk in _text_chunks(token_lengths, paired, chunk_size):
                runner.run(PAIRED, chunk, pixels)
            runner.run(IMAGE_ONLY, image_only, pixels)
            for row in window:
                # Free the preprocessed pixels of this window before decoding goes further.
                image_results[row].pixels = None
        for chunk in _text_chunks(token_lengths, fallback_text_rows, chunk_size):
            runner.run(TEXT_ONLY, chunk, {})
    finally:
        if own_executor:
            executor.shutdown(wait=True, cancel_futures=True)

    return _assemble(
        batch=batch,
        bundle=bundle,
        context=context,
        outputs=outputs,
        post_ids=post_ids,
        row_numbers=row_numbers,
        texts=texts,
        image_sources=image_sources,
        image_paths=image_paths,
        image_results=image_results,
        extras=extras,
        timestamp=started_at,
    )


def _reject_reason(
    *,
    post_id: str | None,
    has_image_source: bool,
    image_result: _ImageResult | None,
    has_text: bool,
    failure: str | None,
) -> tuple[str, str]:
    """Return (reason_code, reason) for a row that produced no score."""
    if post_id is None:
        return "missing_post_id", "post_id is null or empty; every post needs a unique post_id"
    if failure is not None:
        return "inference_failed", failure
    if not has_image_source and not has_text:
        return "no_modality", "the post has neither a readable text nor an image (text is null, empty or whitespace)"
    if image_result is not None and image_result.error_code is not None and not has_text:
        return (
            f"image_{image_result.error_code}",
            f"the image is unreadable ({image_result.error_message}) and the post has no text",
        )
    return "not_scored", "the post was not scored for an unknown reason"


def _assemble(
    *,
    batch: pa.RecordBatch,
    bundle: Bundle,
    context: ScoringContext,
    outputs: _GraphOutputs,
    post_ids: list[str | None],
    row_numbers: np.ndarray,
    texts: list[str | None],
    image_sources: list[bytes | str | None],
    image_paths: list[str | None],
    image_results: dict[int, _ImageResult],
    extras: list[str | None],
    timestamp: datetime,
) -> tuple[pa.Table, pa.Table]:
    """Split rows into the scores table and the rejects table."""
    labels = list(bundle.labels)
    scored = [row for row in range(batch.num_rows) if outputs.graph[row] is not None]
    rejected = [row for row in range(batch.num_rows) if outputs.graph[row] is None]

    image_states: list[str] = []
    text_states: list[str] = []
    image_errors: list[str | None] = []
    for row in scored:
        result = image_results.get(row)
        if image_sources[row] is None:
            image_states.append(MISSING)
            image_errors.append(None)
        elif result is not None and result.error_code is not None:
            image_states.append(UNREADABLE)
            image_errors.append(f"{result.error_code}: {result.error_message}")
        else:
            image_states.append(LOW_QUALITY if outputs.low_quality[row, 0] else OK)
            image_errors.append(None)
        if texts[row] is None:
            text_states.append(MISSING)
        else:
            text_states.append(LOW_QUALITY if outputs.low_quality[row, 1] else OK)

    index = np.asarray(scored, dtype=np.int64)
    probs = outputs.probs[index]
    best = probs.argmax(axis=1) if len(scored) else np.zeros(0, dtype=np.int64)
    quality = outputs.quality[index]
    weights = outputs.branch_weights[index]
    count = len(scored)
    scores = pa.table(
        {
            "post_id": pa.array([post_ids[row] for row in scored], pa.string()),
            "bundle_id": pa.array([bundle.bundle_id] * count, pa.string()),
            "run_id": pa.array([context.run_id] * count, pa.string()),
            "input_path": pa.array([context.input_path] * count, pa.string()),
            "row_number": pa.array(row_numbers[index], pa.int64()),
            "graph": pa.array([outputs.graph[row] for row in scored], pa.string()),
            "label": pa.array([labels[int(position)] for position in best], pa.string()),
            "confidence": pa.array(probs.max(axis=1) if count else [], pa.float64()),
            "probs": pa.array([list(map(float, values)) for values in probs], pa.list_(pa.float64())),
            "image_state": pa.array(image_states, pa.string()),
            "text_state": pa.array(text_states, pa.string()),
            "image_quality": nullable_float(quality[:, 0]),
            "text_quality": nullable_float(quality[:, 1]),
            "image_quality_recovered": nullable_float(quality[:, 3]),
            "text_quality_recovered": nullable_float(quality[:, 2]),
            "w_paired": nullable_float(weights[:, 0]),
            "w_image": nullable_float(weights[:, 1]),
            "w_text": nullable_float(weights[:, 2]),
            "image_error": pa.array(image_errors, pa.string()),
            "text_error": pa.nulls(count, pa.string()),
            "image_path": pa.array([image_paths[row] for row in scored], pa.string()),
            "text": pa.array([texts[row] for row in scored], pa.string()),
            "created_at": _created_at(batch).take(pa.array(index)),
            "extra": pa.array([extras[row] for row in scored], pa.string()),
            "scored_at": pa.array([timestamp] * count, pa.timestamp("us")),
        },
        schema=SCORES_SCHEMA,
    )

    codes: list[str] = []
    reasons: list[str] = []
    for row in rejected:
        code, reason = _reject_reason(
            post_id=post_ids[row],
            has_image_source=image_sources[row] is not None,
            image_result=image_results.get(row),
            has_text=texts[row] is not None,
            failure=outputs.failure[row],
        )
        codes.append(code)
        reasons.append(reason)
    rejects = rejects_table(
        post_ids=[post_ids[row] for row in rejected],
        bundle_id=bundle.bundle_id,
        run_id=context.run_id,
        input_path=context.input_path,
        row_numbers=[int(row_numbers[row]) for row in rejected],
        reason_codes=codes,
        reasons=reasons,
        extras=[extras[row] for row in rejected],
        rejected_at=timestamp,
    )
    return scores, rejects
