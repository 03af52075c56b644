"""`export_bundle`: checkpoint -> three ONNX graphs, tokenizer, parity check and manifest.json."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from drf_batch.bundle import GRAPH_FILES, GRAPH_INPUTS, GRAPH_OUTPUTS, TOKENIZER_DIR, load_bundle, sha256_file
from drf_batch.checkpoint import CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE
from drf_batch.export.graphs import ExportModels, build_export_models
from drf_batch.export.manifest import build_manifest, write_manifest
from drf_batch.export.onnx_export import DEFAULT_OPSET, TARGET_IR_VERSION, export_graph
from drf_batch.export.parity import (
    PROBS_TOLERANCE,
    QUALITY_RELATIVE_TOLERANCE,
    ParityPost,
    builtin_parity_posts,
    check_parity,
    compare_graph,
)
from drf_batch.export.quantize import QUANTIZATIONS, quantize_graph

logger = logging.getLogger(__name__)

EXAMPLE_BATCH = 2
EXAMPLE_TEXTS = ("an example post for export", "another one")


@dataclass(frozen=True)
class ExportOptions:
    """Options of `export_bundle`: output folders, checkpoint, opset, exporter and quantisation.

    `quantize` "int8" also writes an INT8 copy of the bundle into `quantized_out` (by default the
    output folder's name with "-int8" appended). `overwrite` replaces existing bundle folders.
    """

    out: Path
    checkpoint: Path | None = None
    name: str | None = None
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    quantize: str | None = None
    quantized_out: Path | None = None
    overwrite: bool = True

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantize!r}; expected one of {QUANTIZATIONS}")

    @property
    def bundle_name(self) -> str:
        return self.name or Path(self.out).name

    @property
    def quantized_path(self) -> Path:
        if self.quantized_out is not None:
            return Path(self.quantized_out)
        out = Path(self.out)
        return out.with_name(f"{out.name}-{self.quantize}")


@dataclass
class ExportResult:
    """Bundles written by one export, with their parity results and timings in seconds."""

    bundle: Path
    manifest: dict[str, Any]
    seconds: float
    quantized_bundle: Path | None = None
    quantized_manifest: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def export_bundle(options: ExportOptions, *, parity_posts: Sequence[ParityPost] | None = None) -> ExportResult:
    """Export a checkpoint to a bundle folder, check parity with PyTorch and write the manifest.

    `parity_posts` default to builtin_parity_posts(). Raises ParityError (and leaves no bundle at
    `options.out`) when the graphs disagree with PyTorch beyond the tolerances.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    models = build_export_models(options.checkpoint)
    posts = list(parity_posts) if parity_posts is not None else builtin_parity_posts()
    out = Path(options.out)

    with tempfile.TemporaryDirectory(prefix=".export-", dir=_scratch_parent(out)) as scratch:
        staging = Path(scratch) / "bundle"
        staging.mkdir()
        for graph, module in models.graphs.items():
            step = time.perf_counter()
            export_graph(
                module,
                _example_inputs(graph, models),
                staging / GRAPH_FILES[graph],
                output_names=GRAPH_OUTPUTS,
                opset=options.opset,
                exporter=options.exporter,
            )
            timings[f"export_{graph}"] = round(time.perf_counter() - step, 2)
            logger.info("exported %s graph in %.1f s", graph, timings[f"export_{graph}"])
        models.text_encoder.save_tokenizer(staging / TOKENIZER_DIR)

        manifest = build_manifest(
            name=options.bundle_name,
            config=models.config,
            preprocessing=models.preprocessing,
            opset=options.opset,
            ir_version=TARGET_IR_VERSION,
            exporter=options.exporter,
            quantization=None,
            source=_source_record(options.checkpoint, models),
        )
        step = time.perf_counter()
        manifest["parity"] = _measure_parity(staging, manifest, models, posts, quantized=False)
        timings["parity"] = round(time.perf_counter() - step, 2)
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        write_manifest(staging, manifest)
        _replace_folder(staging, out, overwrite=options.overwrite)

    result = ExportResult(bundle=out, manifest=manifest, seconds=0.0, timings=timings)
    if options.quantize is not None:
        step = time.perf_counter()
        quantized_manifest = quantize_bundle(
            out, options.quantized_path, models=models, parity_posts=posts, overwrite=options.overwrite
        )
        timings["quantize"] = round(time.perf_counter() - step, 2)
        result.quantized_bundle = options.quantized_path
        result.quantized_manifest = quantized_manifest
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def quantize_bundle(
    source: Path,
    destination: Path,
    *,
    models: ExportModels,
    parity_posts: Sequence[ParityPost],
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write an INT8 copy of the FP32 bundle `source` into `destination` and return its manifest.

    The copy's parity is measured against PyTorch FP32 and recorded, not enforced.
    """
    import json

    source = Path(source)
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix=".export-", dir=_scratch_parent(destination)) as scratch:
        staging = Path(scratch) / "bundle"
        shutil.copytree(source / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        for graph, file_name in GRAPH_FILES.items():
            quantize_graph(source / file_name, staging / file_name)

        manifest["name"] = destination.name
        manifest["quantization"] = "int8"
        manifest["source"] = {**manifest.get("source", {}), "fp32_bundle": str(source)}
        manifest["parity"] = None
        manifest["files"] = {}
        manifest["parity"] = _measure_parity(staging, manifest, models, parity_posts, quantized=True)
        write_manifest(staging, manifest)
        _replace_folder(staging, Path(destination), overwrite=overwrite)
    return manifest


def _measure_parity(
    staging: Path,
    manifest: dict[str, Any],
    models: ExportModels,
    posts: Sequence[ParityPost],
    *,
    quantized: bool,
) -> dict[str, Any]:
    # load_bundle reads manifest.json, so a preliminary one (without parity) goes in first.
    write_manifest(staging, manifest)
    bundle = load_bundle(staging, providers="cpu", verify=False)
    results = {
        graph: compare_graph(graph, models.graphs[graph], bundle, posts, preprocessing=models.preprocessing)
        for graph in GRAPH_FILES
    }
    for graph, result in results.items():
        logger.info(
            "parity %s on %d posts: max |probs diff| %.2e, labels equal %d/%d",
            graph,
            result.posts,
            result.probs_max_abs_diff,
            result.labels_equal,
            result.posts,
        )
    check_parity(results, quantized=quantized)
    return {
        "reference": "PyTorch FP32 on the CPU",
        "runtime": f"onnxruntime {bundle.providers_used[0]}",
        "posts": len(posts),
        "probs_tolerance": None if quantized else PROBS_TOLERANCE,
        "quality_relative_tolerance": None if quantized else QUALITY_RELATIVE_TOLERANCE,
        "graphs": {graph: result.to_dict() for graph, result in results.items()},
    }


def _example_inputs(graph: str, models: ExportModels) -> dict[str, torch.Tensor]:
    """Inputs used to trace a graph; batch and sequence sizes differ from common test sizes."""
    size = models.preprocessing.size
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {}
    if "pixel_values" in GRAPH_INPUTS[graph]:
        inputs["pixel_values"] = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=generator)
    if "input_ids" in GRAPH_INPUTS[graph]:
        encoded = models.text_encoder.tokenizer(
            list(EXAMPLE_TEXTS), padding="longest", truncation=True,
            max_length=models.text_encoder.max_length, return_tensors="pt",
        )
        inputs["input_ids"] = encoded["input_ids"].to(torch.int64)
        inputs["attention_mask"] = encoded["attention_mask"].to(torch.int64)
    return inputs


def _source_record(checkpoint: Path | None, models: ExportModels) -> dict[str, Any]:
    directory = DEFAULT_MODEL_DIR if checkpoint is None else Path(checkpoint)
    return {
        "checkpoint": "default_model" if checkpoint is None else str(directory),
        "checkpoint_sha256": {
            name: sha256_file(directory / name) for name in (CONFIG_FILE, WEIGHTS_FILE) if (directory / name).is_file()
        },
        "training": models.config.training,
        "finetuned_encoders": models.config.finetuned_encoders,
    }


def _scratch_parent(out: Path) -> Path:
    # Staging beside the destination keeps the final rename on one file system.
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _replace_folder(staging: Path, out: Path, *, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; remove it or pass --overwrite")
        if not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise FileExistsError(
                f"{out} exists and is not a bundle (no manifest.json); choose another --out"
            )
        shutil.rmtree(out)
    staging.rename(out)
