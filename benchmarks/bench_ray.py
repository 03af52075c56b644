"""Measure the Ray engine's overhead: the local engine against Ray with 1 and 2 actors, same dump.

The dump is built from the first N labelled MVSA-Single posts under the cache directory (never in the
repository). Each engine scores it into a fresh DuckDB file, and the Ray results are compared row by
row with the local ones. Run from the repository root:

    python benchmarks/bench_ray.py /path/to/mvsa-single --bundle export/default --posts 2000

Ray starts once, locally and bound to 127.0.0.1, with one logical CPU per core; its start-up time is
reported on its own line. Each row's time includes loading the bundle, and each Ray row's time also
includes starting the actors and loading the bundle in each of them, because a real run pays for
that too. The local engine is measured twice: with onnxruntime's default of one thread per core, and
with one thread, as each Ray actor uses on a machine with one CPU per actor.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mvsa_posts import posts_table, read_ids  # noqa: E402

from drf_batch.paths import cache_dir  # noqa: E402
from drf_batch.scoring.ray_engine import RayOptions, loopback_environment, score_dump  # noqa: E402
from drf_batch.scoring.runner import RunOptions, score_file  # noqa: E402
from drf_batch.storage import ScoreStore  # noqa: E402

VOLATILE = {"scores": ("run_id", "scored_at"), "rejects": ("run_id", "rejected_at")}


def build_dump(mvsa: Path, posts: int) -> Path:
    """Write the first `posts` labelled MVSA posts to a Parquet file under the cache directory."""
    path = cache_dir() / "benchmarks" / f"mvsa-labelled-{posts}.parquet"
    if not path.is_file():
        ids = read_ids(mvsa, "labelled")[:posts]
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(posts_table(mvsa, ids), path)
    return path


def stored_rows(db_path: Path, table: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(db_path), read_only=True) as connection:
        relation = connection.sql(
            f"SELECT * EXCLUDE ({', '.join(VOLATILE[table])}) FROM {table} ORDER BY input_path, row_number"
        )
        return relation.to_arrow_table().to_pylist()


def same_results(first: Path, second: Path) -> bool:
    return all(stored_rows(first, table) == stored_rows(second, table) for table in VOLATILE)


def run_local(
    dump: Path, bundle_path: Path, db_path: Path, options: RunOptions, *, threads: int | None
) -> dict[str, Any]:
    """Score with the local engine; `threads` None is onnxruntime's default of one per core."""
    from drf_batch.bundle import SessionConfig, load_bundle

    started = time.perf_counter()
    bundle = load_bundle(bundle_path, providers="cpu", session_config=SessionConfig(intra_op_threads=threads))
    summary = score_file(dump, bundle, ScoreStore(db_path), options=options)
    seconds = time.perf_counter() - started
    label = "local" if threads is None else f"local, {threads} onnxruntime thread"
    return {"engine": label, "actors": None, "seconds": seconds, "rows": summary.rows_in}


def run_ray(dump: Path, bundle_path: Path, db_path: Path, options: RunOptions, actors: int) -> dict[str, Any]:
    from drf_batch.bundle import load_bundle

    started = time.perf_counter()
    bundle = load_bundle(bundle_path, providers="cpu")
    summaries = score_dump(
        dump, bundle, ScoreStore(db_path), options=options, ray_options=RayOptions(num_actors=actors, providers="cpu")
    )
    seconds = time.perf_counter() - started
    return {"engine": "ray", "actors": actors, "seconds": seconds, "rows": sum(s.rows_in for s in summaries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mvsa", type=Path, help="MVSA-Single folder with images/, texts/ and labels.csv")
    parser.add_argument("--bundle", type=Path, default=Path("export/default"), help="exported bundle folder")
    parser.add_argument("--posts", type=int, default=2000, help="number of posts in the dump")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray actor counts to measure")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per record batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    dump = build_dump(arguments.mvsa, arguments.posts)
    options = RunOptions(batch_size=arguments.batch_size, image_root=arguments.mvsa / "images")
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="bench-ray-", dir=cache_dir()) as scratch:
        local_db = Path(scratch) / "local.duckdb"
        results.append(run_local(dump, arguments.bundle, local_db, options, threads=None))
        # Each Ray actor runs onnxruntime with one thread per reserved CPU, which is one here, so
        # this row separates Ray's own overhead from the thread count.
        single_db = Path(scratch) / "local-1-thread.duckdb"
        single = run_local(dump, arguments.bundle, single_db, options, threads=1)
        single["identical_to_local"] = same_results(local_db, single_db)
        results.append(single)

        for name, value in loopback_environment().items():
            os.environ.setdefault(name, value)
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, logging_level=logging.WARNING)
        ray_start_seconds = time.perf_counter() - started
        try:
            for actors in arguments.actors:
                ray_db = Path(scratch) / f"ray-{actors}.duckdb"
                result = run_ray(dump, arguments.bundle, ray_db, options, actors)
                result["identical_to_local"] = same_results(local_db, ray_db)
                results.append(result)
        finally:
            ray.shutdown()

    local_seconds = results[0]["seconds"]
    for result in results:
        result["posts_per_second"] = result["rows"] / result["seconds"]
        result["time_vs_local"] = result["seconds"] / local_seconds
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "dump": str(dump),
        "posts": arguments.posts,
        "batch_size": arguments.batch_size,
        "ray_start_seconds": ray_start_seconds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }

    print(f"{report['date']}, {report['machine']}, {arguments.posts} posts, batch size {arguments.batch_size}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {report['load_average_after']}")
    print(f"Ray start-up: {ray_start_seconds:.1f} s (not included below)")
    print("| engine | actors | seconds | posts/s | time vs local | identical to local |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(
            f"| {result['engine']} | {result['actors'] or '-'} | {result['seconds']:.1f} | "
            f"{result['posts_per_second']:.1f} | {result['time_vs_local']:.2f}x | "
            f"{result.get('identical_to_local', '-')} |"
        )
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
