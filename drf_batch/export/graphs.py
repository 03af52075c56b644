"""The three exported graphs as torch modules: encoder(s) followed by the DRF head's `infer`.

Each graph fixes the presence masks λ_v and λ_t as constants, so the exported ONNX graph holds
only the branch of the fusion that its posts can use: paired (λ_v = λ_t = 1), image_only
(λ_t = 0) and text_only (λ_v = 0). The absent modality's features are zeros, which the head
gates out before any arithmetic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from drf_batch.checkpoint import CheckpointConfig, load_checkpoint, load_encoder_weights
from drf_batch.encoders import (
    ImageEncoder,
    ImagePreprocessing,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
)
from drf_batch.model import DRFHead

logger = logging.getLogger(__name__)

GraphOutputs = tuple[Tensor, Tensor, Tensor, Tensor]


class PairedGraph(nn.Module):
    """Image and text present: all three fusion branches."""

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, head: DRFHead) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.head = head

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> GraphOutputs:
        feat_v = self.image_encoder(pixel_values)
        feat_t = self.text_encoder(input_ids, attention_mask)
        return self.head.infer(feat_v, feat_t, 1.0, 1.0)


class ImageOnlyGraph(nn.Module):
    """Image present, text missing: the image branch with the text recovered by C_v→t."""

    def __init__(self, image_encoder: ImageEncoder, head: DRFHead, *, text_dim: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.head = head
        self.text_dim = text_dim

    def forward(self, pixel_values: Tensor) -> GraphOutputs:
        feat_v = self.image_encoder(pixel_values)
        feat_t = feat_v.new_zeros((feat_v.shape[0], self.text_dim))
        return self.head.infer(feat_v, feat_t, 1.0, 0.0)


class TextOnlyGraph(nn.Module):
    """Text present, image missing: the text branch with the image recovered by C_t→v."""

    def __init__(self, text_encoder: TextEncoder, head: DRFHead, *, image_dim: int) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.head = head
        self.image_dim = image_dim

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> GraphOutputs:
        feat_t = self.text_encoder(input_ids, attention_mask)
        feat_v = feat_t.new_zeros((feat_t.shape[0], self.image_dim))
        return self.head.infer(feat_v, feat_t, 0.0, 1.0)


@dataclass
class ExportModels:
    """A checkpoint's head and encoders, and the three graph modules built from them."""

    config: CheckpointConfig
    head: DRFHead
    image_encoder: ImageEncoder
    text_encoder: TextEncoder
    preprocessing: ImagePreprocessing
    graphs: dict[str, nn.Module]


def build_export_models(checkpoint: Path | None) -> ExportModels:
    """Load a checkpoint (the packaged default model when None) and build the three graphs.

    The encoders are built by their registry names from the checkpoint config. Fine-tuned encoder
    weights stored in the checkpoint replace the pretrained ones.
    """
    head, config = load_checkpoint(checkpoint)
    head.eval()

    image_name = str(config.image_encoder["name"])
    image_weights = config.image_encoder.get("weights")
    image_encoder = build_image_encoder(image_name, weights=Path(image_weights) if image_weights else None)
    text_encoder = build_text_encoder(
        str(config.text_encoder["name"]), max_length=int(config.text_encoder["max_length"])
    )
    if config.finetuned_encoders:
        if checkpoint is None:
            raise ValueError("the default model cannot hold fine-tuned encoders; pass its checkpoint folder")
        load_encoder_weights(checkpoint, image_encoder, text_encoder)
    image_encoder.eval()
    text_encoder.eval()

    _check_dimensions(config, image_encoder, text_encoder)
    preprocessing = ImagePreprocessing.from_dict(config.image_encoder["preprocessing"])
    if preprocessing != image_encoder.preprocessing:
        # Training fixed the pixels its features came from, so the bundle keeps the checkpoint's.
        logger.warning(
            "the checkpoint's image preprocessing %s differs from encoder %s's default %s; "
            "the bundle uses the checkpoint's",
            preprocessing.to_dict(),
            image_name,
            image_encoder.preprocessing.to_dict(),
        )

    graphs: dict[str, nn.Module] = {
        "paired": PairedGraph(image_encoder, text_encoder, head),
        "image_only": ImageOnlyGraph(image_encoder, head, text_dim=config.drf.text_dim),
        "text_only": TextOnlyGraph(text_encoder, head, image_dim=config.drf.image_dim),
    }
    for module in graphs.values():
        module.eval()
    return ExportModels(
        config=config,
        head=head,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        preprocessing=preprocessing,
        graphs=graphs,
    )


def _check_dimensions(config: CheckpointConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
    for kind, encoder, expected in (
        ("image", image_encoder, config.drf.image_dim),
        ("text", text_encoder, config.drf.text_dim),
    ):
        if encoder.dim != expected:
            raise ValueError(
                f"{kind} encoder {encoder.name!r} returns {encoder.dim}-d features, but the checkpoint's "
                f"head expects {expected}-d; export a checkpoint trained on this encoder"
            )


@torch.no_grad()
def run_graph_module(module: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Run a graph module in PyTorch and return its outputs by ONNX output name."""
    from drf_batch.bundle import GRAPH_OUTPUTS

    outputs = module(**inputs)
    return dict(zip(GRAPH_OUTPUTS, outputs))
