"""The Ray engine: score a Parquet file or a directory of Parquet files on a Ray cluster.

Ray Data reads the input (see `ray_workers.PostsDatasource`) and runs `map_batches` over a pool of
actors. Each actor loads the bundle's onnxruntime sessions once and calls `score_record_batch`, the
function the local engine calls. The driver receives each record batch's results in input order and:

1. writes them as Parquet partitions under the output directory, named by input file and row range;
2. merges them into the DuckDB file with `ScoreStore.write_batch`, one transaction per record batch
   or per group of consecutive batches of one file (`RayOptions.merge_rows`).

Every input file gets its own row in `runs`, with engine 'ray', so a directory of N files makes N
runs, as N local runs would. Row numbers count rows within each input file, as the local engine does.
A re-run skips rows already stored for the bundle, whichever engine stored them. Results reach the
driver in input order, so when a post_id repeats, the row that becomes the `duplicate_post_id`
reject is the same one the local engine rejects.

The Parquet partitions contain the scoring core's output before the merge. DuckDB is the reference:
a repeated post_id is a score in the Parquet partition but a `duplicate_post_id` reject in DuckDB.

Input files, images and the bundle are read through local paths, so on a cluster they must be on
storage that every node mounts at the same path. NOTE: object-store URIs such as s3://... are not
read directly; mount the bucket instead (see docs/cluster.md).

Ray is an optional dependency: nothing here imports it until a run starts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drf_batch import __version__
from drf_batch.scoring.inputs import InputFileError, open_posts_file
from drf_batch.scoring.runner import RunOptions, RunSummary, _bundle_fields, _read_summary
from drf_batch.storage import ScoreStore

logger = logging.getLogger(__name__)

ENGINE = "ray"
RAY_EXTRA_INSTALL = "pip install 'drf-batch[ray]'"

READ_TASK_CPUS = 0.25
"""CPUs reserved for each read task. `plan_cpus_per_actor` keeps this much free, so a read task can
run even when the actors take the rest of a small machine. Reading is mostly I/O and decoding."""

PARQUET_SUFFIXES = (".parquet", ".pq")


class RayNotInstalledError(ImportError):
    """Ray Data is not installed, so `--engine ray` cannot run."""


class RayEngineError(RuntimeError):
    """The Ray engine cannot start with the given options on the connected cluster."""


@dataclass(frozen=True)
class RayOptions:
    """Settings of the Ray engine, on top of the local engine's `RunOptions`.

    Args:
        address: the Ray cluster. None starts a private local instance bound to 127.0.0.1,
            "auto" joins the cluster this machine belongs to, and "ray://HOST:10001" connects
            through Ray Client.
        num_actors: scoring actors, each with its own onnxruntime sessions.
        gpus_per_actor: GPUs reserved for each actor; above 0 the actors request CUDA.
        cpus_per_actor: CPUs reserved for each actor, which is also the onnxruntime thread count
            (at least 1) unless `onnx_threads` is set. None reserves 1 CPU, or an equal share of the cluster's CPUs when it has
            too few for `num_actors` actors and the read tasks.
        output_dir: folder of the Parquet partitions; None means '<db name>-parquet' next to the
            DuckDB file.
        providers: onnxruntime providers request for the actors ('auto', 'cpu', 'cuda'); None
            means 'cuda' when `gpus_per_actor` is above 0, else 'auto'.
        onnx_threads: onnxruntime intra-op threads per graph in each actor; None uses the
            actor's reserved CPUs, rounded down.
        merge_rows: None merges each record batch in its own DuckDB transaction, as the local
            engine does. A number merges consecutive record batches of one input file together,
            up to that many rows per transaction, which raises the driver's merge rate. The
            stored rows stay the same, but when both rows of a `duplicate_post_id` reject share a
            transaction, its reason reads "an earlier row of this file" instead of naming the row.
    """

    address: str | None = None
    num_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    output_dir: Path | None = None
    providers: str | None = None
    merge_rows: int | None = None
    onnx_threads: int | None = None

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise ValueError(f"num_actors must be at least 1, got {self.num_actors}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be 0 or more, got {self.gpus_per_actor}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be above 0, got {self.cpus_per_actor}")
        if self.onnx_threads is not None and self.onnx_threads < 1:
            raise ValueError(f"onnx_threads must be at least 1, got {self.onnx_threads}")
        if self.merge_rows is not None and self.merge_rows < 1:
            raise ValueError(f"merge_rows must be at least 1, got {self.merge_rows}")


ProgressCallback = Callable[[int, int], None]
"""Called after each merged batch with (rows processed, rows skipped), like the local engine's."""


def import_ray(*, local: bool = False) -> ModuleType:
    """Import Ray Data, raising `RayNotInstalledError` that names the extra to install.

    `local=True` means the caller will start a private local instance. Unless Ray is already
    imported, this sets `loopback_environment()` first, because Ray reads it at import time.
    """
    if local and "ray" not in sys.modules:
        for name, value in loopback_environment().items():
            os.environ.setdefault(name, value)
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the [data] extra lacks its dependencies
    except ImportError as error:
        raise RayNotInstalledError(
            f"the Ray engine needs Ray Data, which is not installed ({error}). "
            f"Install it with: {RAY_EXTRA_INSTALL}"
        ) from error
    return ray


def list_input_files(dump: Path) -> list[Path]:
    """Return the Parquet files of a dump: the file itself, or a directory's files, sorted by path.

    Hidden files and names starting with '_' (such as Spark's _SUCCESS markers) are left out.
    """
    dump = dump.resolve()
    if dump.is_file():
        return [dump]
    if not dump.exists():
        raise InputFileError(f"input not found: {dump}; expected a Parquet file or a folder of them")
    files = sorted(
        path
        for path in dump.rglob("*")
        if path.is_file()
        and path.suffix.lower() in PARQUET_SUFFIXES
        and not any(part.startswith((".", "_")) for part in path.relative_to(dump).parts)
    )
    if not files:
        raise InputFileError(
            f"{dump} contains no Parquet files (looked for {', '.join(PARQUET_SUFFIXES)} files "
            "in it and its subfolders)"
        )
    return files


def default_output_dir(db_path: Path) -> Path:
    """Return the Parquet partitions folder next to a DuckDB file, e.g. 'scores-parquet' for 'scores.duckdb'."""
    return db_path.parent / f"{db_path.stem}-parquet"


@dataclass
class _FileRun:
    """One input file of the dump and its run."""

    path: Path
    input_path: str
    num_rows: int
    columns: tuple[str, ...]
    bytes_per_row: float
    run_id: str
    summary: RunSummary
    rows_skipped: int = 0
    stored_row_numbers: Any = field(default=None, repr=False)


def loopback_environment() -> dict[str, str]:
    """Return the environment variables that keep a local Ray instance on 127.0.0.1 and offline.

    Set them before `import ray`: Ray reads them at import time and when it starts its processes.
    ray.init() binds a local instance to this machine's network address unless Ray's multi-node
    mode is off (ray 2.60). They must not be set for a driver that joins a multi-node cluster.
    """
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _connect(options: RayOptions) -> tuple[ModuleType, bool]:
    """Connect to Ray; return the module and whether this call started the instance."""
    ray = import_ray(local=options.address is None)
    if ray.is_initialized():
        return ray, False
    if options.address is not None and options.address.startswith("ray://"):
        _check_ray_client()
    if options.address is None:
        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            logger.warning(
                "Ray was imported before drf-batch could keep it on 127.0.0.1, so the local Ray "
                "instance listens on this machine's network address"
            )
        ray.init(include_dashboard=False, configure_logging=False)
        logger.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
    else:
        ray.init(address=options.address, include_dashboard=False, configure_logging=False)
        logger.info("connected to the Ray cluster at %s", options.address)
    return ray, True


def _check_ray_client() -> None:
    """Raise `RayNotInstalledError` when Ray Client, which `ray://` addresses need, is missing."""
    import importlib.util

    if importlib.util.find_spec("grpc") is None:
        raise RayNotInstalledError(
            "a ray:// address connects through Ray Client, which needs grpcio. Install it with: "
            "pip install 'ray[client]==2.60.0' (the same Ray version as the cluster), or run the "
            "command on a cluster node with --address auto"
        )


def plan_cpus_per_actor(options: RayOptions, cluster_cpus: float) -> float:
    """Return the CPUs to reserve per actor, so that the actors and one read task fit the cluster."""
    needed = options.num_actors * (options.cpus_per_actor or 1.0) + READ_TASK_CPUS
    if options.cpus_per_actor is not None:
        if needed > cluster_cpus:
            raise RayEngineError(
                f"{options.num_actors} actors x {options.cpus_per_actor} CPUs plus {READ_TASK_CPUS} "
                f"for reading need {needed:g} CPUs, but the Ray cluster has {cluster_cpus:g}. "
                "Lower --num-actors or --cpus-per-actor."
            )
        return options.cpus_per_actor
    if needed <= cluster_cpus:
        return 1.0
    share = math.floor((cluster_cpus - READ_TASK_CPUS) / options.num_actors * 100) / 100
    if share < 0.05:
        raise RayEngineError(
            f"the Ray cluster has {cluster_cpus:g} CPUs, too few for {options.num_actors} actors. "
            "Lower --num-actors."
        )
    logger.info(
        "the Ray cluster has %g CPUs, so each of the %d actors reserves %.2f CPUs instead of 1",
        cluster_cpus,
        options.num_actors,
        share,
    )
    return share


def _check_gpus(options: RayOptions, cluster_gpus: float) -> None:
    needed = options.num_actors * options.gpus_per_actor
    if needed > cluster_gpus:
        # NOTE: a cluster with an autoscaler may add GPU nodes later, but without this check Ray
        # would wait forever for GPUs that a fixed-size cluster never gets.
        raise RayEngineError(
            f"{options.num_actors} actors x {options.gpus_per_actor:g} GPUs need {needed:g} GPUs, "
            f"but the Ray cluster has {cluster_gpus:g}. Lower --num-actors or --gpus-per-actor, "
            "or add GPU worker nodes."
        )


def _partition_path(output_dir: Path, *, bundle_id: str, table: str, input_path: str, first: int, last: int) -> Path:
    """Return the Parquet file for one record batch's scores or rejects.

    The name depends only on the bundle, the input file and the first and last row numbers in the
    results, so a batch that is scored again after a crash replaces its earlier file instead of
    adding a second copy.
    """
    source = Path(input_path)
    key = hashlib.sha256(input_path.encode("utf-8")).hexdigest()[:12]
    folder = output_dir / bundle_id / table / f"{source.stem}-{key}"
    return folder / f"rows-{first:012d}-{last:012d}.parquet"


def _write_partition(path: Path, table: pa.Table) -> None:
    """Write a Parquet file through a temporary name, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


def _prepare_files(
    files: Sequence[Path], store: ScoreStore, bundle: Any, *, providers_requested: Sequence[str]
) -> list[_FileRun]:
    """Validate every input file, then start one run per file and look up its stored rows."""
    opened = []
    for path in files:
        parquet_file, _ = open_posts_file(path)
        metadata = parquet_file.metadata
        uncompressed = sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
        bytes_per_row = uncompressed / max(metadata.num_rows, 1)
        opened.append((path, metadata.num_rows, tuple(parquet_file.schema_arrow.names), bytes_per_row))

    fields = _bundle_fields(bundle)
    store.initialize()
    store.register_bundle(
        bundle_id=bundle.bundle_id,
        name=fields["name"],
        path=fields["path"],
        labels=list(bundle.labels),
        image_threshold=fields["image_threshold"],
        text_threshold=fields["text_threshold"],
        manifest=fields["manifest"],
    )
    runs = []
    for path, num_rows, columns, bytes_per_row in opened:
        input_path = str(path)
        run_id = uuid.uuid4().hex
        store.start_run(
            run_id=run_id,
            bundle_id=bundle.bundle_id,
            bundle_name=fields["name"],
            bundle_path=fields["path"],
            input_path=input_path,
            engine=ENGINE,
            providers_requested=list(providers_requested),
            providers_used=[],
            labels=list(bundle.labels),
            drf_batch_version=__version__,
        )
        stored = store.stored_row_numbers(bundle_id=bundle.bundle_id, input_path=input_path)
        summary = RunSummary(
            run_id=run_id,
            input_path=input_path,
            db_path=str(store.db_path),
            bundle_id=bundle.bundle_id,
            status="running",
            providers_requested=list(providers_requested),
        )
        runs.append(
            _FileRun(
                path=path,
                input_path=input_path,
                num_rows=num_rows,
                columns=columns,
                bytes_per_row=bytes_per_row,
                run_id=run_id,
                summary=summary,
                rows_skipped=len(stored),
                stored_row_numbers=stored,
            )
        )
        if len(stored):
            logger.info(
                "%d of %d rows of %s are already stored for bundle %s; scoring the other %d",
                len(stored),
                num_rows,
                input_path,
                bundle.bundle_id,
                num_rows - len(stored),
            )
    return runs


def score_dump(
    dump: Path,
    bundle: Any,
    store: ScoreStore,
    *,
    options: RunOptions = RunOptions(),
    ray_options: RayOptions = RayOptions(),
    progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[RunSummary]:
    """Score every row of a Parquet file or folder of Parquet files on Ray; return one summary per file.

    `bundle` is the driver's loaded bundle (from `drf_batch.bundle.load_bundle`), used for its id,
    labels and manifest. Each actor loads its own copy from `bundle.path`, so every Ray node must
    be able to read that path, and the input files and images, at the same location.
    `on_start` receives the total row count before scoring starts.
    """
    files = list_input_files(dump)
    providers = ray_options.providers or ("cuda" if ray_options.gpus_per_actor > 0 else "auto")
    runs = _prepare_files(files, store, bundle, providers_requested=[providers])
    if on_start is not None:
        on_start(sum(run.num_rows for run in runs))
    if progress is not None:
        progress(0, sum(run.rows_skipped for run in runs))

    started = time.monotonic()
    providers_used: set[str] = set()
    ray: ModuleType | None = None
    started_ray = False
    try:
        pending = [run for run in runs if run.rows_skipped < run.num_rows]
        if pending:
            ray, started_ray = _connect(ray_options)
            providers_used = _run_pipeline(
                ray, pending, bundle, store, options=options, ray_options=ray_options, providers=providers, progress=progress
            )
    except BaseException as error:
        seconds = time.monotonic() - started
        for run in runs:
            run.summary.status = "failed"
            run.summary.seconds = seconds
            store.finish_run(
                run.run_id,
                status="failed",
                seconds=seconds,
                rows_skipped=run.rows_skipped,
                error=f"{type(error).__name__}: {error}",
            )
        raise
    finally:
        if started_ray and ray is not None:
            ray.shutdown()

    # The files are scored together, so each run records the duration of the whole job.
    seconds = time.monotonic() - started
    summaries = []
    for run in runs:
        run.summary.status = "finished"
        run.summary.seconds = seconds
        run.summary.providers_used = sorted(providers_used)
        store.finish_run(run.run_id, status="finished", seconds=seconds, rows_skipped=run.rows_skipped)
        _record_providers_used(store, run.run_id, sorted(providers_used))
        _read_summary(store, run.summary)
        summaries.append(run.summary)
    return summaries


def _record_providers_used(store: ScoreStore, run_id: str, providers_used: list[str]) -> None:
    """Store the providers that the actors reported, which are known only after the actors ran."""
    with store.connection() as connection:
        connection.execute(
            "UPDATE runs SET providers_used = ? WHERE run_id = ?", [providers_used, run_id]
        )


def _run_pipeline(
    ray: ModuleType,
    runs: Sequence[_FileRun],
    bundle: Any,
    store: ScoreStore,
    *,
    options: RunOptions,
    ray_options: RayOptions,
    providers: str,
    progress: ProgressCallback | None,
) -> set[str]:
    """Run the Ray Data pipeline and merge its results; return the providers the actors used."""
    from drf_batch.scoring import ray_workers

    resources = ray.cluster_resources()
    cpus_per_actor = plan_cpus_per_actor(ray_options, float(resources.get("CPU", 0.0)))
    _check_gpus(ray_options, float(resources.get("GPU", 0.0)))
    output_dir = ray_options.output_dir or default_output_dir(store.db_path)

    settings = ray_workers.ActorSettings(
        bundle_path=str(Path(bundle.path).resolve()),
        bundle_id=bundle.bundle_id,
        providers=providers,
        intra_op_threads=ray_options.onnx_threads or max(1, int(cpus_per_actor)),
        run_ids={run.input_path: run.run_id for run in runs},
        image_roots={
            run.input_path: str((options.image_root or run.path.parent).resolve()) for run in runs
        },
        columns={run.input_path: run.columns for run in runs},
        image_limits=options.image_limits,
        inference_batch_size=options.inference_batch_size,
        decode_threads=options.decode_threads,
    )
    ranges = []
    for run in runs:
        item = ray_workers.InputFile(
            path=run.input_path,
            num_rows=run.num_rows,
            size_bytes=run.path.stat().st_size,
            bytes_per_row=run.bytes_per_row,
            stored_row_numbers=run.stored_row_numbers,
        )
        ranges.extend(
            ray_workers.plan_row_ranges(item, batch_size=options.batch_size, num_actors=ray_options.num_actors)
        )
    datasource = ray_workers.PostsDatasource(ranges, batch_size=options.batch_size)
    # One block per read task stops Ray Data from splitting blocks, which would cut a record batch
    # in two and change which texts share an inference chunk.
    dataset = ray.data.read_datasource(datasource, num_cpus=READ_TASK_CPUS, override_num_blocks=len(ranges))
    # Results must reach the driver in input order, because the merge order decides which repeated
    # post_id becomes the duplicate, and the local engine keeps the first occurrence in file order.
    dataset.context.execution_options.preserve_order = True
    # The command shows its own progress bar; Ray Data's would log a status block every 10 s.
    dataset.context.enable_progress_bars = False
    results = dataset.map_batches(
        ray_workers.ScoringActor,
        fn_constructor_kwargs={"settings": settings},
        compute=ray.data.ActorPoolStrategy(size=ray_options.num_actors),
        num_cpus=cpus_per_actor,
        num_gpus=ray_options.gpus_per_actor or None,
        batch_size=None,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
    logger.info(
        "scoring %d file(s) on %d Ray actor(s), %.2f CPUs and %g GPUs each; Parquet partitions go to %s",
        len(runs),
        ray_options.num_actors,
        cpus_per_actor,
        ray_options.gpus_per_actor,
        output_dir,
    )

    merger = _Merger(
        store,
        output_dir=output_dir,
        bundle_id=bundle.bundle_id,
        run_ids={run.input_path: run.run_id for run in runs},
        merge_rows=ray_options.merge_rows,
        progress=progress,
    )
    providers_used: set[str] = set()
    for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in block.to_pylist():
            providers_used.update(name for name in row["providers_used"].split(",") if name)
            merger.add(row)
    merger.flush()
    return providers_used


class _Merger:
    """Writes each record batch's results as Parquet partitions and merges them into DuckDB.

    Each record batch gets its own Parquet files at once. With `merge_rows` set, the DuckDB merge
    combines consecutive batches of one input file into one `write_batch` transaction of up to that
    many rows, because the single database writer, not the actors, limits a large cluster.
    The Parquet files are written before the merge. After a crash between the two steps, the re-run
    scores those batches again and replaces the same files, so neither output contains a row twice.
    """

    def __init__(
        self,
        store: ScoreStore,
        *,
        output_dir: Path,
        bundle_id: str,
        run_ids: dict[str, str],
        merge_rows: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.store = store
        self.output_dir = output_dir
        self.bundle_id = bundle_id
        self.run_ids = run_ids
        self.merge_rows = merge_rows
        self.progress = progress
        self.input_path: str | None = None
        self.scores: list[pa.Table] = []
        self.rejects: list[pa.Table] = []
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        """Take one record batch's result row from a scoring actor."""
        from drf_batch.scoring import ray_workers

        input_path = row[ray_workers.INPUT_PATH_COLUMN]
        scores = ray_workers.from_ipc(row["scores_ipc"])
        rejects = ray_workers.from_ipc(row["rejects_ipc"])
        row_numbers = pa.concat_arrays(
            [scores["row_number"].combine_chunks(), rejects["row_number"].combine_chunks()]
        )
        first = pc.min(row_numbers).as_py()
        last = pc.max(row_numbers).as_py()
        for name, table in (("scores", scores), ("rejects", rejects)):
            if table.num_rows:
                path = _partition_path(
                    self.output_dir,
                    bundle_id=self.bundle_id,
                    table=name,
                    input_path=input_path,
                    first=first,
                    last=last,
                )
                _write_partition(path, table)

        # write_batch orders repeated post_ids by row number, which is file order only within a file.
        if input_path != self.input_path:
            self.flush()
            self.input_path = input_path
        self.scores.append(scores)
        self.rejects.append(rejects)
        self.rows += scores.num_rows + rejects.num_rows
        if self.merge_rows is None or self.rows >= self.merge_rows:
            self.flush()

    def flush(self) -> None:
        """Merge the buffered batches into DuckDB in one transaction."""
        if self.input_path is None or not self.rows:
            return
        self.store.write_batch(
            pa.concat_tables(self.scores), pa.concat_tables(self.rejects), run_id=self.run_ids[self.input_path]
        )
        if self.progress is not None:
            self.progress(self.rows, 0)
        self.scores, self.rejects, self.rows = [], [], 0
