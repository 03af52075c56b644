"""Export a DRF checkpoint to an ONNX bundle (three graphs, tokenizer, manifest.json), check parity
with PyTorch, and quantise a bundle to INT8. The bundle format is described in export/README.md."""

from drf_batch.export.accuracy import BundleMetrics, bundle_metrics
from drf_batch.export.onnx_export import DEFAULT_OPSET, EXPORTERS, TARGET_IR_VERSION, ExportError
from drf_batch.export.parity import PROBS_TOLERANCE, ParityError, ParityPost
from drf_batch.export.pipeline import ExportOptions, ExportResult, export_bundle, quantize_bundle

__all__ = [
    "BundleMetrics",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "PROBS_TOLERANCE",
    "TARGET_IR_VERSION",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ParityError",
    "ParityPost",
    "bundle_metrics",
    "export_bundle",
    "quantize_bundle",
]
