"""The code that runs inside Ray: a Parquet datasource that numbers rows, and the scoring actor.

This module imports Ray at the top, so only `drf_batch.scoring.ray_engine` imports it, after it has
checked that Ray is installed.

The datasource cuts each input file into the local engine's record batches: rows
[k * batch_size, (k + 1) * batch_size), the batches that `ParquetFile.iter_batches` yields over a whole
file. The scoring core pads texts to the longest text of each inference chunk, so the same batches
make the same chunks, which is what makes the two engines' numbers identical rather than merely close.
NOTE: this relies on pyarrow yielding full batches up to the end of a file, as pyarrow 26 does
across row groups. A shorter batch in mid-file would change which texts share an inference chunk,
so scores could then differ from the local engine's in the last bits.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from drf_batch.images import ImageLimits
from drf_batch.scoring.core import ROW_NUMBER_COLUMN, ScoringContext, score_record_batch

INPUT_PATH_COLUMN = "__input_path"
"""The input file of each row, as stored in the database's input_path column."""

BATCH_START_COLUMN = "__batch_start"
"""Row number of the first row of the record batch that a row was read in."""

BATCH_ROWS_COLUMN = "__batch_rows"
"""Row count of that record batch before rows already stored were removed."""

RESULT_SCHEMA = pa.schema(
    [
        (INPUT_PATH_COLUMN, pa.string()),
        (BATCH_START_COLUMN, pa.int64()),
        (BATCH_ROWS_COLUMN, pa.int64()),
        ("providers_used", pa.string()),
        ("scores_ipc", pa.large_binary()),
        ("rejects_ipc", pa.large_binary()),
    ]
)
"""One row per scored record batch: its scores and rejects tables as Arrow IPC streams.

Keeping each batch's two result tables as one row lets them travel through Ray Data unchanged, with
their exact schemas, and lets the driver write each batch in one database transaction.
"""


TASK_BYTES = 64 * 1024 * 1024
"""Largest estimated in-memory size of one read task's rows. Ray Data (2.60) coalesces a task's
small blocks into one and slices any block above 1.5 x its 128 MiB target, and a slice could cut
a record batch in two, so each task stays well below that."""

TASKS_PER_ACTOR = 4
"""Read tasks per actor and file when a file is small, so that every actor gets work."""


@dataclass(frozen=True)
class InputFile:
    """One Parquet input file and the rows of it that an earlier run already stored."""

    path: str
    num_rows: int
    size_bytes: int
    bytes_per_row: float
    """Uncompressed size per row from the Parquet metadata, an estimate of the in-memory size."""
    stored_row_numbers: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one input file that one read task reads."""

    item: InputFile
    start: int
    stop: int


def plan_row_ranges(item: InputFile, *, batch_size: int, num_actors: int) -> list[RowRange]:
    """Cut a file into read tasks at record batch boundaries, leaving out ranges already stored.

    Each range starts at a multiple of `batch_size`, so that it yields exactly the local engine's
    record batches, which are rows [k * batch_size, (k + 1) * batch_size) of the file.
    """
    batches = max(1, math.ceil(item.num_rows / batch_size))
    by_parallelism = math.ceil(batches / (TASKS_PER_ACTOR * num_actors))
    by_size = max(1, int(TASK_BYTES // max(item.bytes_per_row * batch_size, 1.0)))
    rows_per_task = batch_size * max(1, min(by_parallelism, by_size))

    stored = item.stored_row_numbers
    ranges = []
    for start in range(0, item.num_rows, rows_per_task):
        stop = min(start + rows_per_task, item.num_rows)
        already = int(np.searchsorted(stored, stop) - np.searchsorted(stored, start))
        if already < stop - start:
            ranges.append(RowRange(item=item, start=start, stop=stop))
    return ranges


class PostsDatasource(Datasource):
    """Reads posts Parquet files in row ranges, and adds row numbers and the file path.

    Rows already stored for the bundle are dropped here, before they reach an actor, and a record
    batch whose rows are all stored is skipped entirely, the way the local engine skips it.
    """

    def __init__(self, ranges: Sequence[RowRange], *, batch_size: int) -> None:
        super().__init__()
        self._ranges = list(ranges)
        self._batch_size = batch_size

    def estimate_inmemory_data_size(self) -> int | None:
        return int(sum((part.stop - part.start) * part.item.bytes_per_row for part in self._ranges))

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: Any = None,
    ) -> list[ReadTask]:
        # The ranges were planned on the driver; `parallelism` is ignored, and the caller passes
        # override_num_blocks=len(ranges) so that Ray Data does not split blocks.
        tasks = []
        for part in self._ranges:
            metadata = BlockMetadata(
                num_rows=part.stop - part.start,
                size_bytes=int((part.stop - part.start) * part.item.bytes_per_row),
                input_files=[part.item.path],
                exec_stats=None,
            )
            tasks.append(
                ReadTask(
                    lambda part=part: read_row_range(part, batch_size=self._batch_size),
                    metadata,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _read_rows(path: str, start: int, stop: int, *, batch_size: int) -> pa.Table:
    """Read rows [start, stop) of a Parquet file, decoding only the row groups that contain them."""
    parquet_file = pq.ParquetFile(path)
    metadata = parquet_file.metadata
    group_starts = np.cumsum([0] + [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)])
    first_group = int(np.searchsorted(group_starts, start, side="right") - 1)
    last_group = int(np.searchsorted(group_starts, stop - 1, side="right") - 1)

    pieces = []
    position = int(group_starts[first_group])
    for batch in parquet_file.iter_batches(
        batch_size=batch_size, row_groups=list(range(first_group, last_group + 1)), use_threads=False
    ):
        batch_start = position
        position += batch.num_rows
        low = max(start, batch_start)
        high = min(stop, position)
        if low < high:
            pieces.append(batch.slice(low - batch_start, high - low))
        if position >= stop:
            break
    return pa.Table.from_batches(pieces, schema=parquet_file.schema_arrow)


def read_row_range(part: RowRange, *, batch_size: int) -> Iterator[pa.Table]:
    """Yield one table per record batch of the range that has rows still to score."""
    item = part.item
    rows = _read_rows(item.path, part.start, part.stop, batch_size=batch_size)
    stored = np.zeros(part.stop - part.start, dtype=bool)
    in_range = item.stored_row_numbers[
        (item.stored_row_numbers >= part.start) & (item.stored_row_numbers < part.stop)
    ]
    stored[in_range - part.start] = True

    for offset in range(0, rows.num_rows, batch_size):
        table = rows.slice(offset, batch_size)
        count = table.num_rows
        pending = ~stored[offset : offset + count]
        if not pending.any():
            continue
        start = part.start + offset
        table = table.append_column(
            ROW_NUMBER_COLUMN, pa.array(np.arange(start, start + count, dtype=np.int64))
        )
        table = table.append_column(INPUT_PATH_COLUMN, pa.array([item.path] * count, pa.string()))
        table = table.append_column(BATCH_START_COLUMN, pa.array([start] * count, pa.int64()))
        table = table.append_column(BATCH_ROWS_COLUMN, pa.array([count] * count, pa.int64()))
        if not pending.all():
            table = table.filter(pa.array(pending))
        yield table.combine_chunks()


@dataclass(frozen=True)
class ActorSettings:
    """Settings from which each scoring actor rebuilds the local engine's scoring context.

    `columns` maps each input file to its own column names, so that a block that Ray Data
    concatenated from several files is cut back to each file's exact schema before scoring.
    """

    bundle_path: str
    bundle_id: str
    providers: str | None
    intra_op_threads: int
    run_ids: dict[str, str]
    image_roots: dict[str, str]
    columns: dict[str, tuple[str, ...]]
    image_limits: ImageLimits
    inference_batch_size: int
    decode_threads: int


def _to_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_ipc(payload: bytes) -> pa.Table:
    """Read back a table that a scoring actor serialised."""
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


class ScoringActor:
    """A Ray Data actor: loads the bundle once, then scores the blocks it is given.

    Each block is cut into the record batches the datasource read, and each batch goes through
    `score_record_batch`, the same function the local engine calls.
    """

    def __init__(self, settings: ActorSettings) -> None:
        from drf_batch.bundle import SessionConfig, load_bundle

        self._settings = settings
        self._bundle = load_bundle(
            settings.bundle_path,
            providers=settings.providers,
            session_config=SessionConfig(intra_op_threads=settings.intra_op_threads),
        )
        if self._bundle.bundle_id != settings.bundle_id:
            raise RuntimeError(
                f"the bundle at {settings.bundle_path} on this Ray node has id "
                f"{self._bundle.bundle_id}, but the driver loaded bundle {settings.bundle_id} from "
                "the same path. Put one copy of the bundle on storage that every node mounts at "
                "the same path."
            )
        self._providers_used = ",".join(self._bundle.providers_used)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, settings.decode_threads), thread_name_prefix="drf-decode"
        )

    def __call__(self, block: pa.Table) -> pa.Table:
        rows: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
        for part in split_batches(block):
            columns = [*self._settings.columns[part.input_path], ROW_NUMBER_COLUMN]
            batch = part.table.select(columns).combine_chunks().to_batches()[0]
            scores, rejects = score_record_batch(
                batch, self._bundle, context=self._context(part.input_path)
            )
            rows[INPUT_PATH_COLUMN].append(part.input_path)
            rows[BATCH_START_COLUMN].append(part.batch_start)
            rows[BATCH_ROWS_COLUMN].append(part.batch_rows)
            rows["providers_used"].append(self._providers_used)
            rows["scores_ipc"].append(_to_ipc(scores))
            rows["rejects_ipc"].append(_to_ipc(rejects))
        return pa.table(rows, schema=RESULT_SCHEMA)

    def _context(self, input_path: str) -> ScoringContext:
        settings = self._settings
        return ScoringContext(
            run_id=settings.run_ids[input_path],
            input_path=input_path,
            image_root=Path(settings.image_roots[input_path]),
            image_limits=settings.image_limits,
            inference_batch_size=settings.inference_batch_size,
            decode_threads=settings.decode_threads,
            executor=self._executor,
        )


@dataclass(frozen=True)
class BatchPart:
    """The rows of one input record batch found in a block."""

    input_path: str
    batch_start: int
    batch_rows: int
    table: pa.Table


def split_batches(block: pa.Table) -> Iterator[BatchPart]:
    """Cut a block into the record batches the datasource read, in block order.

    Ray Data may pass several blocks to one call, so a block can contain more than one record batch.
    """
    if block.num_rows == 0:
        return
    paths = block[INPUT_PATH_COLUMN].to_pylist()
    starts = block[BATCH_START_COLUMN].to_numpy()
    counts = block[BATCH_ROWS_COLUMN].to_numpy()
    boundaries = [0]
    for row in range(1, block.num_rows):
        if paths[row] != paths[row - 1] or starts[row] != starts[row - 1]:
            boundaries.append(row)
    boundaries.append(block.num_rows)
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        yield BatchPart(
            input_path=paths[begin],
            batch_start=int(starts[begin]),
            batch_rows=int(counts[begin]),
            table=block.slice(begin, end - begin),
        )
