"""A small stand-in for a loaded bundle, for scoring tests that do not need the real ONNX graphs.

Its sessions compute deterministic outputs with the graph names and shapes of a real bundle, record
every feed they receive, and raise on the token FAIL_WORD so tests can exercise inference failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drf_batch.preprocessing import ImagePreprocessing

FAIL_WORD = "explodes"
"""A text that contains this word makes the fake graphs raise."""

FAIL_TOKEN = 999
LABELS = ("negative", "neutral", "positive")
DARK_PIXEL_MEAN = -1.5
"""Images whose normalised pixel mean is below this are flagged low-quality by the fake graphs."""

MAX_TOKENS = 16


class FakeSession:
    """Mimics onnxruntime.InferenceSession.run for one of the three graphs."""

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self.calls: list[dict[str, tuple[int, ...]]] = []
        self.pixels: list[np.ndarray] = []

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append({name: value.shape for name, value in feeds.items()})
        has_image = "pixel_values" in feeds
        if has_image:
            self.pixels.extend(np.array(feeds["pixel_values"]))
        has_text = "input_ids" in feeds
        batch = len(next(iter(feeds.values())))

        if has_text and (feeds["input_ids"] == FAIL_TOKEN).any():
            raise RuntimeError("fake graph failure on a poisoned token")

        image_mean = feeds["pixel_values"].mean(axis=(1, 2, 3)) if has_image else np.zeros(batch)
        token_count = feeds["attention_mask"].sum(axis=1) if has_text else np.zeros(batch)
        logits = np.stack([image_mean, token_count / 4.0, np.ones(batch)], axis=1)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = probs / probs.sum(axis=1, keepdims=True)

        nan = np.full(batch, np.nan)
        log_p_v = -np.abs(image_mean) if has_image else nan
        log_p_t = -token_count.astype(np.float64) if has_text else nan
        quality = np.stack(
            [log_p_v, log_p_t, log_p_v - 1 if has_image else nan, log_p_t - 1 if has_text else nan],
            axis=1,
        )
        weights = np.stack(
            [
                np.full(batch, 0.5 if has_image and has_text else 0.0),
                np.full(batch, 0.3 if has_image else 0.0),
                np.full(batch, 0.2 if has_text else 0.0),
            ],
            axis=1,
        )
        low_quality = np.stack(
            [
                image_mean < DARK_PIXEL_MEAN if has_image else np.zeros(batch, bool),
                token_count < 3 if has_text else np.zeros(batch, bool),
            ],
            axis=1,
        )
        outputs = {
            "probs": probs.astype(np.float32),
            "quality": quality.astype(np.float32),
            "branch_weights": weights.astype(np.float32),
            "low_quality": low_quality,
        }
        return [outputs[name] for name in output_names]


def _token_id(word: str) -> int:
    if word == FAIL_WORD:
        return FAIL_TOKEN
    return 1 + sum(word.encode("utf-8")) % 900


@dataclass
class FakeBundle:
    """Duck-typed like `drf_batch.bundle.Bundle`, with whitespace tokenisation."""

    bundle_id: str = "fakebundle000001"
    labels: tuple[str, ...] = LABELS
    path: Path = Path("/fake/bundle")
    preprocessing: ImagePreprocessing = ImagePreprocessing(
        size=32, resize=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    providers_requested: tuple[str, ...] = ("CPUExecutionProvider",)
    providers_used: tuple[str, ...] = ("CPUExecutionProvider",)
    sessions: dict[str, FakeSession] = field(
        default_factory=lambda: {name: FakeSession(name) for name in ("paired", "image_only", "text_only")}
    )
    manifest: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "fake",
            "labels": list(LABELS),
            "thresholds": {"image": -3.0, "text": -20.0},
        }
    )
    tokenized: list[list[str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "fake"

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self.tokenized.append(list(texts))
        # Token 101 stands for a start token, so even an empty text has length one.
        rows = [[101] + [_token_id(word) for word in text.split()][: MAX_TOKENS - 1] for text in texts]
        width = max((len(row) for row in rows), default=1)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1
        return ids, mask
