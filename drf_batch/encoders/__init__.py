"""Image and text encoders, resolved by name from one registry (see `registry.ENCODERS`)."""

from drf_batch.encoders.base import ImageEncoder, ImagePreprocessing, TextEncoder
from drf_batch.encoders.registry import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    ENCODERS,
    EncoderEntry,
    build_image_encoder,
    build_text_encoder,
)

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "ENCODERS",
    "EncoderEntry",
    "ImageEncoder",
    "ImagePreprocessing",
    "TextEncoder",
    "build_image_encoder",
    "build_text_encoder",
]
