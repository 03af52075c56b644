"""Export one graph module to an ONNX file with dynamic batch and sequence axes.

The default exporter is torch.export-based (`dynamo=True` in torch.onnx.export). With torch 2.14.1
it gives much smaller graphs than the TorchScript exporter for both default encoders, because it
resolves shape arithmetic symbolically. all-MiniLM-L6-v2 with mean pooling exports to 319 nodes
instead of 714. timm's tf_efficientnet_lite0 exports to 93 nodes instead of 628, because the
TorchScript exporter computes its TensorFlow-style "same" padding at run time. Both exporters
matched PyTorch within 1e-5 on batch and sequence sizes other than the traced ones. torch.export
also raises an error when model code specialises a dynamic axis, where the TorchScript tracer only
warns. The TorchScript exporter remains selectable for backbones that torch.export cannot capture.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
MIN_OPSET = 17
"""LayerNormalization, which both encoders use, is an ONNX operator from opset 17 on."""

TARGET_IR_VERSION = 10
"""IR version written into every graph. onnx 1.23 stamps IR version 14 on models it builds, and
onnxruntime 1.31 rejects that because it reads at most IR version 13. IR 10 is what torch 2.14.1's
torch.export-based exporter writes, and the graphs use no feature newer than that."""

BATCH_AXIS = "batch"
SEQUENCE_AXIS = "seq"

EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
"""Loggers of the torch.export-based exporter whose INFO lines are hidden during export."""

INPUT_AXES = {
    "pixel_values": {0: BATCH_AXIS},
    "input_ids": {0: BATCH_AXIS, 1: SEQUENCE_AXIS},
    "attention_mask": {0: BATCH_AXIS, 1: SEQUENCE_AXIS},
}


class ExportError(RuntimeError):
    """A graph could not be exported to ONNX."""


def export_graph(
    module: nn.Module,
    example_inputs: dict[str, Tensor],
    path: Path,
    *,
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> None:
    """Export `module` called with `example_inputs` (keyword arguments in order) to `path`.

    Batch and sequence axes are dynamic, and the file is a single self-contained .onnx with the
    IR version set to TARGET_IR_VERSION.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; the encoders need opset {MIN_OPSET} or newer")

    input_names = list(example_inputs)
    args = tuple(example_inputs[name] for name in input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()

    if exporter == "dynamo":
        _export_dynamo(module, args, path, input_names, list(output_names), opset)
    else:
        _export_torchscript(module, args, path, input_names, list(output_names), opset)

    model = onnx.load(str(path))
    _check_exported(model, path, input_names, output_names)
    written_opset = next(
        (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None
    )
    if written_opset != opset:
        # torch 2.14.1's torch.export-based exporter builds opset 18 graphs. For a lower opset its
        # version converter fails (no adapter for Pad), and it keeps opset 18 with only a warning.
        raise ExportError(
            f"the {exporter} exporter wrote opset {written_opset} instead of the requested opset "
            f"{opset}; request opset {written_opset} or newer, or use `--exporter torchscript` for "
            "an older opset"
        )
    model.ir_version = TARGET_IR_VERSION
    onnx.save(model, str(path))


def _export_dynamo(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> None:
    # One Dim object per axis name ties the batch axis of all inputs, and the sequence axis of
    # input_ids and attention_mask, to the same symbol.
    dims = {BATCH_AXIS: torch.export.Dim(BATCH_AXIS), SEQUENCE_AXIS: torch.export.Dim(SEQUENCE_AXIS)}
    dynamic_shapes = tuple(
        {axis: dims[label] for axis, label in INPUT_AXES[name].items()} for name in input_names
    )
    progress = io.StringIO()
    try:
        # The exporter prints its progress and warns about shared axis names. Its graph passes also
        # log one INFO line per folded constant, so both are captured to keep the CLI output short.
        with (
            contextlib.redirect_stdout(progress),
            warnings.catch_warnings(),
            _loggers_at_warning(EXPORTER_LOGGERS),
        ):
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                module,
                args,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # torch.export raises many unrelated error types
        raise ExportError(
            f"torch.export could not capture {type(module).__name__} ({type(error).__name__}: "
            f"{str(error)[:500]}). Retry with `--exporter torchscript`."
        ) from error
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {type(module).__name__}")
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def _loggers_at_warning(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def _export_torchscript(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> None:
    dynamic_axes: dict[str, dict[int, str]] = {name: dict(INPUT_AXES[name]) for name in input_names}
    for name in output_names:
        dynamic_axes[name] = {0: BATCH_AXIS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # transformers compares traced shapes with Python operators (padding length, is_causal);
        # both are fixed for a bidirectional encoder, and parity with other shapes is tested.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )


def _check_exported(model: onnx.ModelProto, path: Path, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Check the graph's inputs, outputs and dynamic axes against what the bundle format promises."""
    inputs = {item.name: item for item in model.graph.input}
    outputs = [item.name for item in model.graph.output]
    if sorted(inputs) != sorted(input_names) or outputs != list(output_names):
        raise ExportError(
            f"{path} has inputs {sorted(inputs)} and outputs {outputs}; expected inputs "
            f"{sorted(input_names)} and outputs {list(output_names)}"
        )
    for name in input_names:
        dims = inputs[name].type.tensor_type.shape.dim
        for axis, label in INPUT_AXES[name].items():
            if dims[axis].dim_param != label:
                raise ExportError(
                    f"axis {axis} of input {name!r} in {path} is {dims[axis].dim_value or dims[axis].dim_param!r}, "
                    f"expected the dynamic axis {label!r}; the exporter specialised it to the example input"
                )
