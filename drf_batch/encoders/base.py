"""Encoder interfaces: image and text backbones as plain `torch.nn.Module`s that export to ONNX.

An image encoder maps preprocessed pixels `[B, 3, S, S]` float32 to pooled features `[B, dim]`.
A text encoder maps `input_ids` and `attention_mask` `[B, T]` int64 to pooled features `[B, dim]`.
Both carry what a feature cache and an exported bundle need to reproduce their inputs: the image
preprocessing, or the tokenizer and its maximum length.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

# ImagePreprocessing lives in a torch-free module so that scoring can import it without torch.
from drf_batch.preprocessing import INTERPOLATIONS, ImagePreprocessing, Interpolation  # noqa: F401


def fingerprint_state_dict(module: torch.nn.Module) -> str:
    """Hash every parameter and buffer (name, dtype, shape and values) into a sha256 hex digest.

    The digest changes whenever the weights change, fine-tuning included, so it is a safe part of
    a feature-cache key.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(json.dumps(list(value.shape)).encode())
        # view(uint8) reads the raw bytes of any dtype, bfloat16 included, without a numpy copy.
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ImageEncoder(torch.nn.Module):
    """Base class of image encoders: `forward(pixel_values [B, 3, S, S]) -> [B, dim]`."""

    name: str
    dim: int
    preprocessing: ImagePreprocessing

    def __init__(self, *, name: str, dim: int, preprocessing: ImagePreprocessing) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.preprocessing = preprocessing
        self._fingerprint: str | None = None

    def weights_fingerprint(self) -> str:
        """Return the sha256 of the weights, computed once and cached until `train()` is called."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_state_dict(self)
        return self._fingerprint

    def train(self, mode: bool = True) -> ImageEncoder:
        # Training may change the weights, so the cached fingerprint is dropped.
        self._fingerprint = None
        return super().train(mode)

    def cache_spec(self) -> dict[str, Any]:
        """Describe everything that determines this encoder's features, for a cache key."""
        return {
            "kind": "image",
            "name": self.name,
            "weights": self.weights_fingerprint(),
            "preprocessing": self.preprocessing.to_dict(),
        }


class TextEncoder(torch.nn.Module):
    """Base class of text encoders: `forward(input_ids, attention_mask) -> [B, dim]`."""

    name: str
    dim: int
    max_length: int

    def __init__(self, *, name: str, dim: int, max_length: int, tokenizer: Any) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.max_length = max_length
        self.tokenizer = tokenizer
        self._fingerprint: str | None = None

    def weights_fingerprint(self) -> str:
        """Return the sha256 of the weights, computed once and cached until `train()` is called."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_state_dict(self)
        return self._fingerprint

    def train(self, mode: bool = True) -> TextEncoder:
        self._fingerprint = None
        return super().train(mode)

    def tokenizer_fingerprint(self) -> str:
        """Return the sha256 of the tokenizer's serialised form (vocabulary, normaliser, rules)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"tokenizer of text encoder {self.name!r} is {type(self.tokenizer).__name__}; "
                "expected a transformers fast tokenizer (one with a tokenizer.json)"
            )
        serialised = json.loads(backend.to_str())
        # Calling the tokenizer stores its last padding and truncation settings in these two
        # fields, so they are excluded. The cache spec records `max_length` separately.
        serialised.pop("padding", None)
        serialised.pop("truncation", None)
        return hashlib.sha256(json.dumps(serialised, sort_keys=True).encode()).hexdigest()

    def save_tokenizer(self, directory: Path) -> None:
        """Write the tokenizer files (tokenizer.json and its configs) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))

    def cache_spec(self) -> dict[str, Any]:
        """Describe everything that determines this encoder's features, for a cache key."""
        return {
            "kind": "text",
            "name": self.name,
            "weights": self.weights_fingerprint(),
            "tokenizer": self.tokenizer_fingerprint(),
            "max_length": self.max_length,
        }
