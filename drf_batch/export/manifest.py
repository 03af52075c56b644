"""manifest.json of a bundle: what the graphs expect, where they came from, and file checksums."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

import drf_batch
from drf_batch.bundle import (
    BRANCH_COLUMNS,
    FORMAT_VERSION,
    GRAPH_FILES,
    GRAPH_INPUTS,
    LOW_QUALITY_COLUMNS,
    MANIFEST_NAME,
    QUALITY_COLUMNS,
    sha256_file,
)
from drf_batch.checkpoint import CheckpointConfig
from drf_batch.encoders import ImagePreprocessing


def build_manifest(
    *,
    name: str,
    config: CheckpointConfig,
    preprocessing: ImagePreprocessing,
    opset: int,
    ir_version: int,
    exporter: str,
    quantization: str | None,
    source: dict[str, Any],
) -> dict[str, Any]:
    """Return the manifest of a bundle without its file checksums and parity results."""
    import onnx

    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "drf_batch_version": drf_batch.__version__,
        "labels": list(config.labels),
        "image_encoder": {
            "name": config.image_encoder["name"],
            "dim": config.drf.image_dim,
            "preprocessing": preprocessing.to_dict(),
        },
        "text_encoder": {
            "name": config.text_encoder["name"],
            "dim": config.drf.text_dim,
            "max_length": int(config.text_encoder["max_length"]),
        },
        "opset": opset,
        "ir_version": ir_version,
        "exporter": exporter,
        "graphs": dict(GRAPH_FILES),
        "inputs": {graph: list(names) for graph, names in GRAPH_INPUTS.items()},
        "outputs": {
            "probs": {"shape": ["batch", len(config.labels)], "columns": list(config.labels)},
            "quality": {"shape": ["batch", len(QUALITY_COLUMNS)], "columns": list(QUALITY_COLUMNS)},
            "branch_weights": {"shape": ["batch", len(BRANCH_COLUMNS)], "columns": list(BRANCH_COLUMNS)},
            "low_quality": {"shape": ["batch", len(LOW_QUALITY_COLUMNS)], "columns": list(LOW_QUALITY_COLUMNS)},
        },
        "drf": config.drf.to_dict(),
        "statistics": config.statistics,
        "thresholds": dict(config.thresholds),
        "quantization": quantization,
        "source": source,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "files": {},
        "parity": None,
    }


def file_checksums(root: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file in the bundle except manifest.json."""
    checksums = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            checksums[path.relative_to(root).as_posix()] = sha256_file(path)
    return checksums


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Record the checksums of the bundle's files in `manifest` and write it as manifest.json."""
    manifest["files"] = file_checksums(root)
    text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8")

