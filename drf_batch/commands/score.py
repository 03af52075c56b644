"""`drf-batch score`: score a posts Parquet file with an exported bundle into a DuckDB file."""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from drf_batch.bundle import Bundle
    from drf_batch.scoring.ray_engine import RayOptions
    from drf_batch.scoring.runner import RunOptions, RunSummary
    from drf_batch.storage import ScoreStore

logger = logging.getLogger(__name__)


class ProviderChoice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class EngineChoice(str, Enum):
    local = "local"
    ray = "ray"


def _format_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def format_summary(summary: RunSummary) -> str:
    """Render the end-of-run summary printed by `drf-batch score`."""
    lines = [
        f"run {summary.run_id} {summary.status}: {summary.input_path} -> {summary.db_path}",
        f"  rows in:        {summary.rows_in}",
        f"  scored:         {summary.rows_scored}",
        f"  rejected:       {summary.rows_rejected} ({_format_counts(summary.rejected_by_reason)})",
        f"  already stored: {summary.rows_skipped} (skipped)",
        f"  graphs:         {_format_counts(summary.graphs)}",
        f"  image states:   {_format_counts(summary.image_states)}",
        f"  text states:    {_format_counts(summary.text_states)}",
        f"  providers:      requested {', '.join(summary.providers_requested) or 'none'}; "
        f"used {', '.join(summary.providers_used) or 'none (no row needed scoring)'}",
        f"  time:           {summary.seconds:.1f} s, {summary.posts_per_second:.1f} posts/s",
    ]
    return "\n".join(lines)


def score(
    posts: Path = typer.Argument(..., help="Parquet file of posts (post_id, text, image_path or image_bytes); with --engine ray also a folder of them."),
    bundle: Path = typer.Option(Path("export/default"), "--bundle", help="Exported model bundle folder."),
    db: Path = typer.Option(Path("scores.duckdb"), "--db", help="DuckDB file to write runs, scores and rejects to."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder that relative image_path values resolve against; defaults to the input file's folder."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Rows per record batch and per database transaction."),
    inference_batch_size: int = typer.Option(32, "--inference-batch-size", min=1, help="Posts per onnxruntime call."),
    decode_threads: int = typer.Option(2, "--decode-threads", min=1, help="Threads that decode and resize images."),
    onnx_threads: int | None = typer.Option(None, "--onnx-threads", min=1, help="onnxruntime intra-op threads per graph; defaults to the number of physical cores."),
    allow_urls: bool = typer.Option(False, "--allow-urls", help="Fetch http(s):// image paths; without it they are marked unreadable."),
    providers: ProviderChoice = typer.Option(ProviderChoice.auto, "--providers", help="Execution providers: cpu, cuda, or auto (CUDA when onnxruntime offers it, else the CPU)."),
    max_image_pixels: int | None = typer.Option(None, "--max-image-pixels", min=1, help="Images whose declared width x height exceeds this are unreadable (default 40 million)."),
    max_image_bytes: int | None = typer.Option(None, "--max-image-bytes", min=1, help="Image files larger than this many bytes are unreadable (default 32 MiB)."),
    lock_timeout: float | None = typer.Option(
        None, "--lock-timeout", help="Seconds to wait for another process's lock on the DuckDB file; by default it waits without limit."
    ),
    engine: EngineChoice = typer.Option(EngineChoice.local, "--engine", help="local: score in this process. ray: score on a Ray cluster (needs pip install 'drf-batch[ray]')."),
    address: str | None = typer.Option(None, "--address", help="With --engine ray: 'auto' joins this machine's Ray cluster, 'ray://HOST:10001' connects to a remote one; by default a local Ray instance starts."),
    num_actors: int = typer.Option(1, "--num-actors", min=1, help="With --engine ray: scoring actors, each holding its own onnxruntime sessions."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="With --engine ray: GPUs reserved per actor; above 0 the actors use CUDA."),
    cpus_per_actor: float | None = typer.Option(None, "--cpus-per-actor", min=0.01, help="With --engine ray: CPUs reserved per actor, also its onnxruntime thread count; default 1, or a share when the cluster has fewer CPUs."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    pause_after_batch: float = typer.Option(0.0, "--pause-after-batch", hidden=True, help="Seconds to sleep after each committed batch (for tests)."),
) -> None:
    """Score a posts Parquet file into DuckDB, routing each post to the graph that fits its modalities."""
    import duckdb
    from tqdm import tqdm

    from drf_batch.bundle import BundleError, SessionConfig, load_bundle
    from drf_batch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageLimits
    from drf_batch.scoring.inputs import InputFileError, open_posts_file
    from drf_batch.scoring.runner import RunOptions, manifest_only_bundle_if_done, score_file
    from drf_batch.storage import DatabaseBusyError, LabelMismatchError, LockPolicy, ScoreStore

    try:
        if engine is EngineChoice.ray:
            _check_ray_inputs(posts, local=address is None)
        else:
            open_posts_file(posts)
    except InputFileError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error

    db_problem = _check_db_path(db)
    if db_problem is not None:
        typer.echo(f"error: {db_problem}", err=True)
        raise typer.Exit(2)

    store = ScoreStore(db, lock_policy=LockPolicy(timeout_s=lock_timeout))
    try:
        if db.exists():
            # Open an existing file now, so one that is not a DuckDB database fails before the bundle loads.
            with store.connection():
                pass
        loaded: Any = None
        if engine is not EngineChoice.ray:
            # A re-run of a finished file needs only the bundle's id, not its onnxruntime sessions.
            loaded = manifest_only_bundle_if_done(posts, bundle, store)
        if loaded is None:
            # load_bundle logs one line on the providers in use, and a warning when CUDA was
            # requested explicitly but the sessions fell back to the CPU.
            # With Ray the driver only reads the bundle's id and labels; the actors run the graphs.
            loaded = load_bundle(
                bundle,
                providers="cpu" if engine is EngineChoice.ray else providers.value,
                session_config=SessionConfig(intra_op_threads=onnx_threads),
            )
    except (BundleError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: could not load bundle {bundle}: {error}", err=True)
        raise typer.Exit(2) from error
    except DatabaseBusyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except duckdb.Error as error:
        typer.echo(f"error: could not open --db {db}: {error}. Pass a writable DuckDB file path.", err=True)
        raise typer.Exit(2) from error

    options = RunOptions(
        batch_size=batch_size,
        image_root=image_root,
        image_limits=ImageLimits(
            max_pixels=max_image_pixels or DEFAULT_MAX_PIXELS,
            max_bytes=max_image_bytes or DEFAULT_MAX_BYTES,
            allow_urls=allow_urls,
        ),
        inference_batch_size=inference_batch_size,
        decode_threads=decode_threads,
        pause_after_batch_s=pause_after_batch,
    )
    bar: tqdm | None = None

    def on_start(total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="posts", disable=not progress, dynamic_ncols=True)

    def on_batch(processed: int, skipped: int) -> None:
        if bar is None:
            return
        if skipped:
            bar.total = max((bar.total or 0) - skipped, 0)
            bar.refresh()
        bar.update(processed)

    if engine is EngineChoice.ray:
        ray_options = _ray_options(address, num_actors, gpus_per_actor, cpus_per_actor, providers, onnx_threads)
        try:
            _score_on_ray(posts, loaded, store, options=options, ray_options=ray_options, progress=on_batch, on_start=on_start)
        finally:
            if bar is not None:
                bar.close()
        return

    try:
        summary = score_file(
            posts,
            loaded,
            store,
            options=options,
            providers_requested=list(loaded.providers_requested),
            progress=on_batch,
            on_start=on_start,
        )
    except (InputFileError, LabelMismatchError, DatabaseBusyError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    finally:
        if bar is not None:
            bar.close()
    typer.echo(format_summary(summary))


def _check_db_path(db: Path) -> str | None:
    """Return why `db` cannot be opened for writing, or None when it looks usable.

    Runs before the bundle loads, so a wrong --db fails in a second instead of after minutes.
    NOTE: os.access ignores permissions for root, so a root run still finds out on open.
    """
    if db.is_dir():
        return f"--db {db} is a directory; pass a DuckDB file path such as {db / 'scores.duckdb'}"
    if db.exists():
        if not os.access(db, os.R_OK | os.W_OK):
            return f"--db {db} is not readable and writable by this user; fix its permissions or pass another path"
        return None
    folder = db.parent
    if not folder.is_dir():
        return f"--db {db}: folder {folder} does not exist; create it or pass a path in an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--db {db} cannot be created: folder {folder} is not writable; pass a path in a writable folder"
    return None


def _check_ray_inputs(posts: Path, *, local: bool) -> None:
    """Fail before any work when Ray is missing or an input file is unusable."""
    from drf_batch.scoring.inputs import open_posts_file
    from drf_batch.scoring.ray_engine import RayNotInstalledError, import_ray, list_input_files

    try:
        import_ray(local=local)
    except RayNotInstalledError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    for path in list_input_files(posts):
        open_posts_file(path)


def _ray_options(
    address: str | None,
    num_actors: int,
    gpus_per_actor: float,
    cpus_per_actor: float | None,
    providers: ProviderChoice,
    onnx_threads: int | None,
) -> RayOptions:
    from drf_batch.scoring.ray_engine import RayOptions

    return RayOptions(
        address=address,
        num_actors=num_actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        providers=None if providers is ProviderChoice.auto else providers.value,
        onnx_threads=onnx_threads,
    )


def _score_on_ray(
    posts: Path,
    loaded: Bundle,
    store: ScoreStore,
    *,
    options: RunOptions,
    ray_options: RayOptions,
    progress: Callable[[int, int], None],
    on_start: Callable[[int], None],
) -> None:
    from drf_batch.scoring.inputs import InputFileError
    from drf_batch.scoring.ray_engine import RayEngineError, RayNotInstalledError, score_dump
    from drf_batch.storage import DatabaseBusyError, LabelMismatchError

    try:
        summaries = score_dump(
            posts, loaded, store, options=options, ray_options=ray_options, progress=progress, on_start=on_start
        )
    except (InputFileError, LabelMismatchError, DatabaseBusyError, RayEngineError, RayNotInstalledError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    for summary in summaries:
        typer.echo(format_summary(summary))
