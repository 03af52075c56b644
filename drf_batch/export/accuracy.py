"""Classification metrics of a bundle on labelled posts, e.g. to measure what INT8 costs.

Each post goes to the graph that matches what it has, as in scoring: paired when both modalities
are usable, image_only or text_only when one is. A post whose image cannot be read counts as
text-only; a post with neither usable modality is left out and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from drf_batch.bundle import Bundle
from drf_batch.metrics import ClassificationMetrics, classification_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleMetrics:
    """Metrics of one bundle on labelled posts, with how many posts each graph scored."""

    metrics: ClassificationMetrics
    posts: int
    posts_per_graph: dict[str, int]
    skipped: int
    predictions: dict[str, str] = field(repr=False)
    """post_id -> predicted label."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics.to_dict(),
            "posts": self.posts,
            "posts_per_graph": self.posts_per_graph,
            "skipped": self.skipped,
        }


def bundle_metrics(
    bundle: Bundle,
    posts: pl.DataFrame,
    *,
    image_root: Path,
    split: str | None = "test",
    batch_size: int = 32,
) -> BundleMetrics:
    """Score labelled posts (drf_batch.data.load_labelled_posts columns) and compute the metrics.

    `split` selects posts of one split; None uses all posts. Labels must be among bundle.labels.
    """
    from drf_batch.images import ImageLoadError, load_image, preprocess_image, resolve_image_path
    from drf_batch.texts import normalize_text

    if split is not None:
        posts = posts.filter(pl.col("split") == split)
    if posts.height == 0:
        raise ValueError(f"no labelled posts in split {split!r}")
    unknown = sorted(set(posts["label"].to_list()) - set(bundle.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the bundle's labels {list(bundle.labels)}")

    spec = bundle.preprocessing
    routed: dict[str, list[tuple[str, np.ndarray | None, str | None]]] = {
        "paired": [],
        "image_only": [],
        "text_only": [],
    }
    labels: dict[str, str] = {}
    skipped = 0
    for row in posts.iter_rows(named=True):
        pixels = None
        try:
            if row.get("image_bytes") is not None:
                pixels = preprocess_image(load_image(bytes(row["image_bytes"])), spec)
            elif row.get("image_path"):
                pixels = preprocess_image(load_image(resolve_image_path(row["image_path"], image_root)), spec)
        except ImageLoadError:
            pixels = None
        text = normalize_text(row.get("text"))
        if pixels is None and text is None:
            skipped += 1
            continue
        if pixels is not None and text is not None:
            graph = "paired"
        elif pixels is not None:
            graph = "image_only"
        else:
            graph = "text_only"
        routed[graph].append((row["post_id"], pixels, text))
        labels[row["post_id"]] = row["label"]

    predictions: dict[str, str] = {}
    for graph, items in routed.items():
        for chunk in _chunks(items, batch_size):
            inputs: dict[str, np.ndarray] = {}
            if graph != "text_only":
                inputs["pixel_values"] = np.stack([pixels for _, pixels, _ in chunk])
            if graph != "image_only":
                input_ids, attention_mask = bundle.tokenize([text for _, _, text in chunk])
                inputs["input_ids"] = input_ids
                inputs["attention_mask"] = attention_mask
            probs = bundle.run(graph, **inputs)["probs"]
            for (post_id, _, _), index in zip(chunk, probs.argmax(axis=-1)):
                predictions[post_id] = bundle.labels[int(index)]

    if skipped:
        logger.warning("%d labelled posts have neither a readable image nor a text and are left out", skipped)
    index_of = {label: index for index, label in enumerate(bundle.labels)}
    post_ids = list(predictions)
    y_true = np.array([index_of[labels[post_id]] for post_id in post_ids])
    y_pred = np.array([index_of[predictions[post_id]] for post_id in post_ids])
    return BundleMetrics(
        metrics=classification_metrics(y_true, y_pred, num_classes=len(bundle.labels)),
        posts=len(post_ids),
        posts_per_graph={graph: len(items) for graph, items in routed.items()},
        skipped=skipped,
        predictions=predictions,
    )


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
