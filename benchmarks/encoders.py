"""Measure frozen-encoder throughput and fill the feature cache for an MVSA-style folder.

Usage:
    python benchmarks/encoders.py --data /path/to/mvsa-single --threads 2 --sample 256

Step 1 encodes `--sample` labelled posts without a cache and reports images/s and texts/s, both
as wall-clock rates and per CPU-second of this process. On a shared machine the wall-clock rate
falls with other load, while the CPU-time rate does not, so both are printed with the load average.
Step 2 encodes every labelled and unlabelled post into the feature cache (default location:
$DRF_BATCH_CACHE or ~/.cache/drf-batch), unless `--skip-fill` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import torch

from drf_batch.data import default_image_root, load_labelled_posts, load_unlabelled_posts
from drf_batch.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder, build_text_encoder
from drf_batch.features import FeatureCache, encode_posts


def _timed(function) -> tuple[float, float]:
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall_start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVSA-style folder (labels.csv, images/, texts/)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--sample", type=int, default=256, help="posts encoded without a cache for the rates")
    parser.add_argument("--batch-size", type=int, default=32, help="items per encoder call")
    parser.add_argument("--skip-fill", action="store_true", help="only measure; do not fill the feature cache")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    image_encoder = build_image_encoder(DEFAULT_IMAGE_ENCODER)
    text_encoder = build_text_encoder(DEFAULT_TEXT_ENCODER)
    root = default_image_root(args.data)
    labelled = load_labelled_posts(args.data)
    sample = labelled.head(args.sample)

    # Warm-up: one batch of each, so one-time costs (weights fingerprint, allocator) are excluded.
    encode_posts(sample.head(args.batch_size), image_encoder, text_encoder, image_root=root, cache=None, progress=False)

    load_before = os.getloadavg()[0]
    image_wall, image_cpu = _timed(
        lambda: encode_posts(sample, image_encoder, None, image_root=root, cache=None, batch_size=args.batch_size, progress=False)
    )
    text_wall, text_cpu = _timed(
        lambda: encode_posts(sample, None, text_encoder, image_root=root, cache=None, batch_size=args.batch_size, progress=False)
    )
    load_after = os.getloadavg()[0]
    results: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'unknown CPU'}",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "sample_posts": sample.height,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "images_per_s_wall": round(sample.height / image_wall, 1),
        "images_per_cpu_s": round(sample.height / image_cpu, 1),
        "texts_per_s_wall": round(sample.height / text_wall, 1),
        "texts_per_cpu_s": round(sample.height / text_cpu, 1),
    }
    print(json.dumps(results, indent=2), flush=True)

    if args.skip_fill:
        return
    cache = FeatureCache()
    unlabelled = load_unlabelled_posts(args.data)
    everything = pl.concat([labelled.select(unlabelled.columns), unlabelled])
    fill_wall, _ = _timed(
        lambda: encode_posts(everything, image_encoder, text_encoder, image_root=root, cache=cache, batch_size=args.batch_size)
    )
    results.update(
        {
            "cache_directory": str(cache.directory),
            "cached_posts": everything.height,
            "fill_seconds": round(fill_wall, 1),
        }
    )
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
