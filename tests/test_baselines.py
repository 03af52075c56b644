"""Tests of the baseline heads that the robustness grid compares DRF with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drf_batch.evaluation.baselines import (
    BASELINE_KINDS,
    BaselineConfig,
    BlankFeatures,
    build_baseline,
)
from drf_batch.model import DRFOutput

IMAGE_DIM, TEXT_DIM, BATCH = 12, 8, 5


def _blanks() -> BlankFeatures:
    return BlankFeatures(image=np.full(IMAGE_DIM, 0.5, np.float32), text=np.full(TEXT_DIM, -0.5, np.float32))


def _head(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BaselineConfig(kind=kind, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, d=16, hidden=16, dropout=0.0)
    return build_baseline(config, _blanks()).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, IMAGE_DIM, generator=generator), torch.randn(BATCH, TEXT_DIM, generator=generator)


@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_baseline_output_contract(kind: str) -> None:
    feat_v, feat_t = _inputs()

    output = _head(kind)(feat_v, feat_t, torch.ones(BATCH), torch.ones(BATCH))

    assert isinstance(output, DRFOutput)
    assert output.logits.shape == (BATCH, 3)
    assert torch.allclose(output.probs.sum(dim=-1), torch.ones(BATCH))
    assert torch.isnan(output.log_p_v).all()
    assert torch.isnan(output.branch_weights).all()
    assert output.losses == {}


@pytest.mark.parametrize("kind", ("concat", "attention", "image"))
def test_missing_image_uses_blank_feature(kind: str) -> None:
    head = _head(kind)
    feat_v, feat_t = _inputs()
    garbage = torch.full_like(feat_v, float("nan"))
    blank = torch.full_like(feat_v, 0.5)

    missing = head(garbage, feat_t, torch.zeros(BATCH), torch.ones(BATCH)).logits
    blanked = head(blank, feat_t, torch.ones(BATCH), torch.ones(BATCH)).logits

    assert torch.isfinite(missing).all()
    assert torch.allclose(missing, blanked)


@pytest.mark.parametrize("kind", ("concat", "attention", "text"))
def test_missing_text_uses_blank_feature(kind: str) -> None:
    head = _head(kind)
    feat_v, feat_t = _inputs()

    missing = head(feat_v, torch.zeros_like(feat_t), torch.ones(BATCH), torch.zeros(BATCH)).logits
    blanked = head(feat_v, torch.full_like(feat_t, -0.5), torch.ones(BATCH), torch.ones(BATCH)).logits

    assert torch.allclose(missing, blanked)


def test_text_only_ignores_image() -> None:
    head = _head("text")
    feat_v, feat_t = _inputs()

    first = head(feat_v, feat_t, torch.ones(BATCH), torch.ones(BATCH)).logits
    second = head(torch.randn_like(feat_v), feat_t, torch.ones(BATCH), torch.ones(BATCH)).logits

    assert torch.equal(first, second)


def test_image_only_ignores_text() -> None:
    head = _head("image")
    feat_v, feat_t = _inputs()

    first = head(feat_v, feat_t, torch.ones(BATCH), torch.ones(BATCH)).logits
    second = head(feat_v, torch.randn_like(feat_t), torch.ones(BATCH), torch.ones(BATCH)).logits

    assert torch.equal(first, second)


def test_input_normalization_applied() -> None:
    head = _head("concat")
    feat_v, feat_t = _inputs()
    ones = torch.ones(BATCH)
    before = head(feat_v, feat_t, ones, ones).logits

    head.set_input_normalization(torch.full((IMAGE_DIM,), 3.0), torch.full((IMAGE_DIM,), 2.0),
                                 torch.zeros(TEXT_DIM), torch.ones(TEXT_DIM))
    after = head(2.0 * feat_v + 3.0, feat_t, ones, ones).logits

    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_baseline_fits_separable_data(kind: str) -> None:
    torch.manual_seed(0)
    config = BaselineConfig(kind=kind, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, d=16, hidden=32, dropout=0.0)
    head = build_baseline(config, _blanks())
    labels = torch.arange(60) % 3
    # Both modalities carry the label, so every baseline can learn it.
    feat_v = torch.nn.functional.one_hot(labels, IMAGE_DIM).float() + 0.1 * torch.randn(60, IMAGE_DIM)
    feat_t = torch.nn.functional.one_hot(labels, TEXT_DIM).float() + 0.1 * torch.randn(60, TEXT_DIM)
    ones = torch.ones(60)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)

    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(head(feat_v, feat_t, ones, ones).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    head.eval()
    accuracy = (head(feat_v, feat_t, ones, ones).logits.argmax(dim=-1) == labels).float().mean()
    assert accuracy == 1.0


def test_config_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'lstm'"):
        BaselineConfig(kind="lstm", image_dim=4, text_dim=4)


def test_blank_features_shape_checked() -> None:
    config = BaselineConfig(kind="concat", image_dim=IMAGE_DIM, text_dim=TEXT_DIM)
    wrong = BlankFeatures(image=np.zeros(3, np.float32), text=np.zeros(TEXT_DIM, np.float32))

    with pytest.raises(ValueError, match="blank features have shapes"):
        build_baseline(config, wrong)
