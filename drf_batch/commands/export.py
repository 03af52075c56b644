"""`drf-batch export-onnx`: export a checkpoint to an ONNX bundle and check parity with PyTorch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def export_onnx(
    checkpoint: Optional[Path] = typer.Argument(
        None,
        help="Checkpoint folder written by `drf-batch train`. Default: the model packaged with drf-batch.",
    ),
    out: Path = typer.Option(Path("export/default"), "--out", help="Bundle folder to write (replaced if it exists)."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name in the manifest. Default: the folder name."),
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="Also write a dynamically quantised copy: 'int8'. It goes to --quantized-out.",
    ),
    quantized_out: Optional[Path] = typer.Option(
        None, "--quantized-out", help="Folder of the quantised bundle. Default: --out with '-int8' appended."
    ),
    opset: int = typer.Option(18, "--opset", help="ONNX opset of the graphs: 18 or newer with --exporter dynamo, 17 or newer with torchscript."),
    exporter: str = typer.Option(
        "dynamo", "--exporter", help="torch.onnx exporter: 'dynamo' (torch.export) or 'torchscript'."
    ),
    parity_data: Optional[Path] = typer.Option(
        None,
        "--parity-data",
        help="Posts for the parity check: a posts .parquet or an MVSA-style folder. "
        "Default: images and texts made by drf-batch.",
    ),
    image_root: Optional[Path] = typer.Option(
        None, "--image-root", help="Folder that image_path values of --parity-data are relative to."
    ),
    parity_limit: int = typer.Option(32, "--parity-limit", min=1, help="Maximum number of posts read from --parity-data."),
) -> None:
    """Export a DRF checkpoint to three ONNX graphs, the tokenizer and manifest.json."""
    from drf_batch.bundle import GRAPH_FILES, BundleError
    from drf_batch.export import ExportError, ExportOptions, ParityError, export_bundle
    from drf_batch.export.parity import load_parity_posts

    try:
        options = ExportOptions(
            out=out,
            checkpoint=checkpoint,
            name=name,
            opset=opset,
            exporter=exporter,
            quantize=quantize,
            quantized_out=quantized_out,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

    try:
        posts = None
        if parity_data is not None:
            posts = load_parity_posts(parity_data, image_root=image_root, limit=parity_limit)
        result = export_bundle(options, parity_posts=posts)
    except (ParityError, ExportError, BundleError, FileNotFoundError, FileExistsError, ValueError) as error:
        # Expected failures (missing checkpoint, bad options, parity) get one message, no traceback.
        typer.secho(f"export failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error

    typer.echo(f"bundle {result.bundle} written in {result.seconds:.0f} s")
    bundles = [(result.bundle, result.manifest)]
    if result.quantized_bundle is not None and result.quantized_manifest is not None:
        bundles.append((result.quantized_bundle, result.quantized_manifest))
    for folder, manifest in bundles:
        label = manifest.get("quantization") or "fp32"
        typer.echo(f"{folder} ({label}):")
        for graph, file_name in GRAPH_FILES.items():
            parity = manifest["parity"]["graphs"][graph]
            size_mb = (Path(folder) / file_name).stat().st_size / 1e6
            typer.echo(
                f"  {file_name:<16} {size_mb:7.1f} MB  max |probs diff| vs PyTorch "
                f"{parity['probs_max_abs_diff']:.2e} on {parity['posts']} posts"
            )
