"""Scoring benchmark: throughput of PyTorch eager, onnxruntime FP32 and INT8, peak memory, re-run time.

All three engines score the same real posts through the same local runner (`score_file`): image
decoding, tokenisation, length bucketing and DuckDB writes are shared, and only the model call
differs. The eager engine runs the PyTorch encoders and the DRF head that the bundle was exported
from. Peak RSS is measured on dumps made by repeating the posts under new ids, each scored by
`drf-batch score` in its own process. Inputs and databases go under the cache directory.

    python benchmarks/scoring.py --mvsa ../shared/data/mvsa-single \\
        --bundle export/default --int8-bundle export/default-int8 --out docs/benchmarks-scoring.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from mvsa_posts import default_output, posts_table, read_ids, write_repeated  # noqa: E402

GRAPH_OUTPUTS = ("probs", "quality", "branch_weights", "low_quality")

# Scores one file with one engine in a fresh process and prints a JSON line with its results.
_ENGINE_LAUNCHER = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import scoring as benchmark
engine, posts, bundle, int8, checkpoint, db_path, image_root = sys.argv[2:9]
started = time.perf_counter()
summary = benchmark.score_with_engine(engine, Path(posts), Path(bundle), Path(db_path), Path(image_root),
                                      checkpoint=Path(checkpoint) if checkpoint != "-" else None)
seconds = time.perf_counter() - started
print("RESULT", json.dumps({"rows": summary.rows_in, "processed": summary.rows_scored + summary.rows_rejected,
      "seconds": seconds, "run_seconds": summary.seconds, "providers": summary.providers_used,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime}),
      flush=True)
"""


class EagerSession:
    """Runs one graph's computation with the PyTorch encoders and DRF head, like an ORT session."""

    def __init__(self, graph: str, image_encoder: Any, text_encoder: Any, head: Any) -> None:
        self.graph = graph
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.head = head

    def get_providers(self) -> list[str]:
        return ["torch-eager-cpu"]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        batch = len(next(iter(feeds.values())))
        with torch.inference_mode():
            if "pixel_values" in feeds:
                feat_v = self.image_encoder(torch.from_numpy(feeds["pixel_values"]))
                lam_v = torch.ones(batch)
            else:
                feat_v = torch.zeros(batch, self.head.config.image_dim)
                lam_v = torch.zeros(batch)
            if "input_ids" in feeds:
                feat_t = self.text_encoder(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
                lam_t = torch.ones(batch)
            else:
                feat_t = torch.zeros(batch, self.head.config.text_dim)
                lam_t = torch.zeros(batch)
            outputs = dict(zip(GRAPH_OUTPUTS, self.head.infer(feat_v, feat_t, lam_v, lam_t)))
        return [outputs[name].numpy() for name in output_names]


class EagerBundle:
    """A bundle look-alike whose graphs run in PyTorch eager mode; tokenizer and labels from `onnx_bundle`."""

    def __init__(self, onnx_bundle: Any, checkpoint: Path | None) -> None:
        from drf_batch.checkpoint import load_checkpoint
        from drf_batch.encoders import build_image_encoder, build_text_encoder

        head, config = load_checkpoint(checkpoint)
        image_encoder = build_image_encoder(config.image_encoder["name"]).eval()
        text_encoder = build_text_encoder(config.text_encoder["name"], max_length=config.text_encoder.get("max_length")).eval()
        self.onnx_bundle = onnx_bundle
        self.bundle_id = f"eager-{onnx_bundle.bundle_id}"
        self.labels = onnx_bundle.labels
        self.preprocessing = onnx_bundle.preprocessing
        self.manifest = {**onnx_bundle.manifest, "name": "pytorch-eager"}
        self.path = onnx_bundle.path
        self.providers_used = ("torch-eager-cpu",)
        self.sessions = {
            graph: EagerSession(graph, image_encoder, text_encoder, head) for graph in ("paired", "image_only", "text_only")
        }

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.onnx_bundle.tokenize(texts)


class NullSession:
    """Returns constant outputs at once: isolates the memory of reading, decoding and writing."""

    def get_providers(self) -> list[str]:
        return ["null"]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = len(next(iter(feeds.values())))
        outputs = {
            "probs": np.full((batch, 3), 1 / 3, np.float32),
            "quality": np.zeros((batch, 4), np.float32),
            "branch_weights": np.full((batch, 3), 1 / 3, np.float32),
            "low_quality": np.zeros((batch, 2), bool),
        }
        return [outputs[name] for name in output_names]


def score_with_engine(
    engine: str, posts: Path, bundle_path: Path, db_path: Path, image_root: Path, *, checkpoint: Path | None
) -> Any:
    """Score `posts` with engine 'eager', 'onnx' (the bundle at `bundle_path`) or 'null'; return the summary."""
    from drf_batch.bundle import load_bundle
    from drf_batch.scoring.runner import RunOptions, score_file
    from drf_batch.storage import ScoreStore

    bundle: Any = load_bundle(bundle_path, providers="cpu")
    if engine == "eager":
        bundle = EagerBundle(bundle, checkpoint)
    elif engine == "null":
        bundle.sessions = {graph: NullSession() for graph in bundle.sessions}
    return score_file(posts, bundle, ScoreStore(db_path), options=RunOptions(image_root=image_root))


def _run_engine(engine: str, posts: Path, bundle: Path, db_path: Path, image_root: Path, checkpoint: Path | None) -> dict[str, Any]:
    """Run `score_with_engine` in a new process, so that its peak RSS is its own."""
    command = [
        sys.executable, "-c", _ENGINE_LAUNCHER, str(REPO_ROOT / "benchmarks"), engine, str(posts), str(bundle),
        "-", str(checkpoint) if checkpoint else "-", str(db_path), str(image_root),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} run on {posts} failed:\n{result.stderr[-3000:]}")
    line = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def _machine() -> str:
    cores = os.cpu_count()
    processor = platform.processor() or platform.machine()
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} logical CPU cores ({model or processor}), no GPU, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mvsa", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mvsa-single")
    parser.add_argument("--bundle", type=Path, default=Path("export/default"))
    parser.add_argument("--int8-bundle", type=Path, default=Path("export/default-int8"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint the bundle came from (default: packaged model)")
    parser.add_argument("--posts", type=int, default=2000, help="real posts for the throughput comparison")
    parser.add_argument("--rss-rows", type=int, nargs="*", default=[10_000, 200_000], help="dump sizes for peak RSS with the FP32 bundle")
    parser.add_argument("--null-rss-rows", type=int, nargs="*", default=[], help="text-only dump sizes for peak RSS with null graphs")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results as a Markdown page")
    arguments = parser.parse_args()

    work = default_output("scoring")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    image_root = arguments.mvsa / "images"
    ids = read_ids(arguments.mvsa, "labelled")[: arguments.posts]
    table = posts_table(arguments.mvsa, ids)
    posts = work / f"mvsa-{len(ids)}.parquet"
    pq.write_table(table, posts)

    engines = [("onnxruntime FP32", "onnx", arguments.bundle)]
    if arguments.int8_bundle.is_dir():
        engines.append(("onnxruntime INT8", "onnx", arguments.int8_bundle))
    if not arguments.skip_eager:
        engines.append(("PyTorch eager", "eager", arguments.bundle))
    throughput = []
    for label, engine, bundle in engines:
        db_path = work / f"{engine}-{bundle.name}.duckdb"
        result = _run_engine(engine, posts, bundle, db_path, image_root, arguments.checkpoint)
        result.update(engine=label, posts_per_second=result["processed"] / result["run_seconds"])
        throughput.append(result)
        print(json.dumps(result), flush=True)
    rerun = _run_engine("onnx", posts, arguments.bundle, work / f"onnx-{arguments.bundle.name}.duckdb", image_root, None)

    memory: list[dict[str, Any]] = []
    for engine, rows in [("onnx", count) for count in arguments.rss_rows] + [("null", count) for count in arguments.null_rss_rows]:
        if engine == "null":
            # Text-only posts: with the null graphs the run measures reading, tokenising and writing.
            dump = write_repeated(table.drop_columns(["image_path"]), work / f"dump-text-{rows}.parquet", rows=rows)
        else:
            dump = write_repeated(table, work / f"dump-{rows}.parquet", rows=rows)
        result = _run_engine(engine, dump, arguments.bundle, work / f"dump-{engine}-{rows}.duckdb", image_root, None)
        result.update(engine=engine)
        memory.append(result)
        print(json.dumps(result), flush=True)

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "posts": len(ids),
        "throughput": throughput,
        "rerun": rerun,
        "memory": memory,
    }
    print(json.dumps(report, indent=2))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    if arguments.markdown is not None:
        arguments.markdown.write_text(render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    """Render a benchmark report (the JSON that `main` prints) as Markdown tables."""
    by_engine = {row["engine"]: row for row in report["throughput"]}
    eager = by_engine.get("PyTorch eager")
    fp32 = by_engine.get("onnxruntime FP32")
    lines = [
        f"Measured {report['date']} on {report['machine']}.",
        "",
        f"    {report['command']}",
        "",
        f"Throughput on the same {report['posts']} real posts, end to end through the local runner "
        "(Parquet reading, image decoding, tokenisation, inference, DuckDB writes), each engine in a fresh process:",
        "",
        "| engine | posts/s | seconds | vs PyTorch eager | vs onnxruntime FP32 | CPU seconds | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["throughput"]:
        versus_eager = f"{row['posts_per_second'] / eager['posts_per_second']:.2f}x" if eager else "-"
        versus_fp32 = f"{row['posts_per_second'] / fp32['posts_per_second']:.2f}x" if fp32 else "-"
        cpu = f"{row['cpu_seconds']:.0f}" if "cpu_seconds" in row else "-"
        lines.append(
            f"| {row['engine']} | {row['posts_per_second']:.2f} | {row['run_seconds']:.0f} | {versus_eager} | "
            f"{versus_fp32} | {cpu} | {row['peak_rss_mib']:.0f} |"
        )
    rerun = report["rerun"]
    lines += [
        "",
        f"Idempotent re-run of the FP32 run (every row already stored): {rerun['run_seconds']:.2f} s in the runner, "
        f"{rerun['seconds']:.1f} s for the whole process including start-up and loading the bundle.",
        "",
        "Peak RSS by dump size (the posts repeated under new ids, each run in a fresh process):",
        "",
        "| engine | rows | peak RSS (MiB) | seconds | posts/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in report["memory"]:
        label = "onnxruntime FP32" if row["engine"] == "onnx" else "null graphs, text only"
        rate = row["processed"] / row["run_seconds"] if row["run_seconds"] else 0.0
        lines.append(f"| {label} | {row['rows']} | {row['peak_rss_mib']:.0f} | {row['run_seconds']:.0f} | {rate:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
