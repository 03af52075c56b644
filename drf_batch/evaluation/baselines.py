"""Baseline heads that the robustness grid compares DRF with.

Every baseline reads the same frozen encoder features as the DRF head, has the same forward
signature ``forward(feat_v, feat_t, lam_v, lam_t)`` and returns the same output type, so one
training loop trains them all. None of them can take a missing modality. The paper that
introduced DRF padded the inputs of the methods it compared with, so here too a missing image
(``lam_v == 0``) becomes the feature of a blank image. A missing text (``lam_t == 0``) becomes the
feature of an all-mask text. Those two features are computed once from the encoders
(``encode_blank_features``) and stored as buffers.

- ``ModalityOnlyHead``: one modality alone (text-only or image-only).
- ``ConcatFusionHead``: late fusion of the two projected features by concatenation.
- ``AttentionFusionHead``: a small transformer encoder over a class token and the two modality
  tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from drf_batch.model.head import INPUT_SCALE_FLOOR, DRFOutput

BASELINE_KINDS: tuple[str, ...] = ("concat", "attention", "text", "image")


@dataclass(frozen=True)
class BaselineConfig:
    """Shape of a baseline head. ``d`` and ``hidden`` default to the DRF head's widths."""

    kind: str
    image_dim: int
    text_dim: int
    d: int = 256
    hidden: int = 256
    num_classes: int = 3
    dropout: float = 0.1
    attention_heads: int = 4
    attention_layers: int = 2

    def __post_init__(self) -> None:
        if self.kind not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline {self.kind!r}; expected one of {', '.join(BASELINE_KINDS)}")
        for name in ("image_dim", "text_dim", "d", "hidden", "num_classes", "attention_heads", "attention_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BaselineConfig.{name} must be a positive integer, got {value!r}")
        if self.d % self.attention_heads:
            raise ValueError(
                f"BaselineConfig.d={self.d} must be divisible by attention_heads={self.attention_heads}"
            )


@dataclass(frozen=True)
class BlankFeatures:
    """Encoder features of a blank image and of an all-mask text, the stand-ins for a missing modality."""

    image: np.ndarray
    text: np.ndarray


def encode_blank_features(image_encoder: nn.Module, text_encoder: nn.Module, *, mask_words: int) -> BlankFeatures:
    """Encode a blank (all masked, black) image and a text of ``mask_words`` mask tokens once.

    The blank image uses the fill colour of the image corruption, so a missing image looks like a
    fully corrupted one. The mask token is the text tokenizer's own.
    """
    from drf_batch.disruption import blank_image, mask_all_words
    from drf_batch.images import preprocess_image
    from drf_batch.texts import tokenize_texts

    if mask_words < 1:
        raise ValueError(f"mask_words must be at least 1, got {mask_words}")
    spec = image_encoder.preprocessing
    pixels = preprocess_image(blank_image(spec.size), spec)
    mask_token = text_encoder.tokenizer.mask_token
    if not mask_token:
        raise ValueError(f"text encoder {text_encoder.name!r} has no mask token; an all-mask text needs one")
    text = mask_all_words(" ".join(["x"] * mask_words), mask_token=mask_token)
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, [text], max_length=text_encoder.max_length)
    with torch.inference_mode():
        image_feature = image_encoder(torch.from_numpy(pixels)[None])
        text_feature = text_encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    return BlankFeatures(
        image=image_feature[0].float().cpu().numpy(),
        text=text_feature[0].float().cpu().numpy(),
    )


def _projection(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))


def _classifier(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    # Three layers, like the DRF head's shared fusion MLP followed by its linear classifier.
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class _BaselineHead(nn.Module):
    """Shared parts: the blank-feature buffers and the substitution of missing modalities."""

    def __init__(self, config: BaselineConfig, blanks: BlankFeatures | None) -> None:
        super().__init__()
        self.config = config
        blank_image = np.zeros(config.image_dim, np.float32) if blanks is None else blanks.image
        blank_text = np.zeros(config.text_dim, np.float32) if blanks is None else blanks.text
        if blank_image.shape != (config.image_dim,) or blank_text.shape != (config.text_dim,):
            raise ValueError(
                f"blank features have shapes {blank_image.shape} and {blank_text.shape}, expected "
                f"({config.image_dim},) and ({config.text_dim},); encode them with the same encoders"
            )
        self.register_buffer("blank_v", torch.as_tensor(blank_image, dtype=torch.float32).clone())
        self.register_buffer("blank_t", torch.as_tensor(blank_text, dtype=torch.float32).clone())
        self.register_buffer("input_mean_v", torch.zeros(config.image_dim))
        self.register_buffer("input_scale_v", torch.ones(config.image_dim))
        self.register_buffer("input_mean_t", torch.zeros(config.text_dim))
        self.register_buffer("input_scale_t", torch.ones(config.text_dim))

    @torch.no_grad()
    def set_input_normalization(
        self, mean_v: torch.Tensor, scale_v: torch.Tensor, mean_t: torch.Tensor, scale_t: torch.Tensor
    ) -> None:
        """Standardise encoder features per dimension as (x - mean) / scale, as the DRF head does."""
        self.input_mean_v.copy_(torch.as_tensor(mean_v, dtype=torch.float32))
        self.input_scale_v.copy_(torch.as_tensor(scale_v, dtype=torch.float32).clamp_min(INPUT_SCALE_FLOOR))
        self.input_mean_t.copy_(torch.as_tensor(mean_t, dtype=torch.float32))
        self.input_scale_t.copy_(torch.as_tensor(scale_t, dtype=torch.float32).clamp_min(INPUT_SCALE_FLOOR))

    def fill_missing(
        self, feat_v: torch.Tensor, feat_t: torch.Tensor, lam_v: torch.Tensor, lam_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the features of missing modalities by the blank features."""
        # torch.where rather than a λ-weighted sum, because NaN * 0 is NaN.
        present_v = (lam_v > 0.5).unsqueeze(-1)
        present_t = (lam_t > 0.5).unsqueeze(-1)
        feat_v = torch.where(present_v, feat_v, self.blank_v.expand_as(feat_v))
        feat_t = torch.where(present_t, feat_t, self.blank_t.expand_as(feat_t))
        return feat_v, feat_t

    def classify(self, feat_v: torch.Tensor, feat_t: torch.Tensor, lam_v: torch.Tensor, lam_t: torch.Tensor) -> torch.Tensor:
        """Return logits [B, C] from standardised features in which missing modalities are blank."""
        raise NotImplementedError

    def forward(self, feat_v: torch.Tensor, feat_t: torch.Tensor, lam_v: torch.Tensor, lam_t: torch.Tensor) -> DRFOutput:
        """Classify encoder features [B, Dv] and [B, Dt] with presence masks λ [B] (0 or 1)."""
        lam_v = torch.as_tensor(lam_v, dtype=feat_v.dtype, device=feat_v.device).expand(feat_v.shape[0])
        lam_t = torch.as_tensor(lam_t, dtype=feat_t.dtype, device=feat_t.device).expand(feat_t.shape[0])
        feat_v, feat_t = self.fill_missing(feat_v, feat_t, lam_v, lam_t)
        feat_v = (feat_v - self.input_mean_v) / self.input_scale_v
        feat_t = (feat_t - self.input_mean_t) / self.input_scale_t
        logits = self.classify(feat_v, feat_t, lam_v, lam_t)
        return make_output(logits)


class ModalityOnlyHead(_BaselineHead):
    """Classify from one modality alone; the other modality's features are ignored."""

    def __init__(self, config: BaselineConfig, blanks: BlankFeatures | None = None) -> None:
        super().__init__(config, blanks)
        if config.kind not in ("text", "image"):
            raise ValueError(f"ModalityOnlyHead takes kind 'text' or 'image', got {config.kind!r}")
        in_dim = config.text_dim if config.kind == "text" else config.image_dim
        self.projection = _projection(in_dim, config.d, config.dropout)
        self.classifier = _classifier(config.d, config.hidden, config.num_classes, config.dropout)

    def classify(self, feat_v, feat_t, lam_v, lam_t):  # noqa: ANN001, ANN201
        feature = feat_t if self.config.kind == "text" else feat_v
        return self.classifier(self.projection(feature))


class ConcatFusionHead(_BaselineHead):
    """Late fusion: project each modality to ``d``, concatenate and classify with a three-layer MLP."""

    def __init__(self, config: BaselineConfig, blanks: BlankFeatures | None = None) -> None:
        super().__init__(config, blanks)
        self.projection_v = _projection(config.image_dim, config.d, config.dropout)
        self.projection_t = _projection(config.text_dim, config.d, config.dropout)
        self.classifier = _classifier(2 * config.d, config.hidden, config.num_classes, config.dropout)

    def classify(self, feat_v, feat_t, lam_v, lam_t):  # noqa: ANN001, ANN201
        fused = torch.cat([self.projection_v(feat_v), self.projection_t(feat_t)], dim=-1)
        return self.classifier(fused)


class AttentionFusionHead(_BaselineHead):
    """A transformer encoder over three tokens: a learned class token, the image and the text.

    Each token gets a learned type embedding, and the class token's output is classified. Missing
    modalities enter as blank features, not as masked-out tokens, like the concat baseline.
    """

    def __init__(self, config: BaselineConfig, blanks: BlankFeatures | None = None) -> None:
        super().__init__(config, blanks)
        self.projection_v = nn.Linear(config.image_dim, config.d)
        self.projection_t = nn.Linear(config.text_dim, config.d)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.d))
        self.type_embedding = nn.Parameter(torch.randn(1, 3, config.d) / math.sqrt(config.d))
        layer = nn.TransformerEncoderLayer(
            d_model=config.d,
            nhead=config.attention_heads,
            dim_feedforward=config.hidden,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.attention_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d)
        self.classifier = nn.Linear(config.d, config.num_classes)

    def classify(self, feat_v, feat_t, lam_v, lam_t):  # noqa: ANN001, ANN201
        batch = feat_v.shape[0]
        tokens = torch.cat(
            [
                self.class_token.expand(batch, -1, -1),
                self.projection_v(feat_v).unsqueeze(1),
                self.projection_t(feat_t).unsqueeze(1),
            ],
            dim=1,
        )
        encoded = self.encoder(tokens + self.type_embedding)
        return self.classifier(self.norm(encoded[:, 0]))


def build_baseline(config: BaselineConfig, blanks: BlankFeatures | None = None) -> _BaselineHead:
    """Build the baseline head named by ``config.kind``."""
    if config.kind in ("text", "image"):
        return ModalityOnlyHead(config, blanks)
    if config.kind == "concat":
        return ConcatFusionHead(config, blanks)
    return AttentionFusionHead(config, blanks)


def make_output(logits: torch.Tensor) -> DRFOutput:
    """Wrap baseline logits in the DRF head's output type.

    Baselines have no densities, branches or converters, so the log densities and branch weights
    are NaN, the feature fields are empty [B, 0] tensors and there are no auxiliary losses.
    """
    batch = logits.shape[0]
    nan = torch.full((batch,), float("nan"), dtype=logits.dtype, device=logits.device)
    empty = logits.new_zeros((batch, 0))
    return DRFOutput(
        logits=logits,
        probs=torch.softmax(logits, dim=-1),
        log_p_v=nan,
        log_p_t=nan,
        log_p_v_to_t=nan,
        log_p_t_to_v=nan,
        branch_weights=torch.full((batch, 3), float("nan"), dtype=logits.dtype, device=logits.device),
        f_v=empty,
        f_t=empty,
        f_v_to_t=empty,
        f_t_to_v=empty,
    )
