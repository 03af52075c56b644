"""The DRF head: availability patterns, ablation switches, queue updates and the infer path."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from drf_batch.model import DRFConfig, DRFHead
from drf_batch.model.quality import log_gaussian, log_gaussian_kernel

IMAGE_DIM = 12
TEXT_DIM = 7
BASE = DRFConfig(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, d=8, hidden=16, queue_size=32, dropout=0.0)


def make_trained_head(config: DRFConfig = BASE, *, steps: int = 6, seed: int = 0) -> DRFHead:
    """Build a head and run a few training steps on random features, then freeze it."""
    torch.manual_seed(seed)
    head = DRFHead(config)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    head.train()
    for _ in range(steps):
        output = head(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))
        loss = F.cross_entropy(output.logits, torch.randint(0, 3, (16,))) + sum(output.losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.freeze_statistics()
    head.eval()
    return head


@pytest.fixture(scope="module")
def head() -> DRFHead:
    return make_trained_head()


def test_paired_fusion_matches_formula(head: DRFHead) -> None:
    torch.manual_seed(3)
    feat_v, feat_t = torch.randn(4, IMAGE_DIM), torch.randn(4, TEXT_DIM)
    ones = torch.ones(4)

    output = head(feat_v, feat_t, ones, ones)

    f_v, f_t = head.project(feat_v, feat_t, ones, ones)
    f_v_to_t = head.convert_v_to_t(f_v)
    f_t_to_v = head.convert_t_to_v(f_t)
    k_v = log_gaussian_kernel(f_v, head.mu_v, head.sigma_v).exp()
    k_t = log_gaussian_kernel(f_t, head.mu_t, head.sigma_t).exp()
    k_v_to_t = log_gaussian_kernel(f_v_to_t, head.mu_t, head.sigma_t).exp()
    k_t_to_v = log_gaussian_kernel(f_t_to_v, head.mu_v, head.sigma_v).exp()
    M = (
        (k_v * k_t).unsqueeze(-1) * head.fusion(f_v, f_t)
        + (k_v * k_v_to_t).unsqueeze(-1) * head.fusion(f_v, f_v_to_t)
        + (k_t_to_v * k_t).unsqueeze(-1) * head.fusion(f_t_to_v, f_t)
    )

    assert torch.allclose(output.logits, head.classifier(M), atol=1e-5)
    assert torch.allclose(output.log_p_v_to_t, log_gaussian(f_v_to_t, head.mu_t, head.sigma_t))
    assert torch.allclose(output.branch_weights[:, 0], k_v * k_t)


@pytest.mark.parametrize(
    ("lam_v", "lam_t", "used_branch"),
    [(1.0, 0.0, 1), (0.0, 1.0, 2)],
    ids=["image_only", "text_only"],
)
def test_single_modality_uses_one_branch(head: DRFHead, lam_v: float, lam_t: float, used_branch: int) -> None:
    torch.manual_seed(4)
    output = head(torch.randn(5, IMAGE_DIM), torch.randn(5, TEXT_DIM), torch.full((5,), lam_v), torch.full((5,), lam_t))

    weights = output.branch_weights
    assert (weights[:, used_branch] > 0).all()
    others = [branch for branch in range(3) if branch != used_branch]
    assert (weights[:, others] == 0).all()


@pytest.mark.parametrize(
    ("lam_v", "lam_t", "absent"),
    [(1.0, 0.0, "text"), (0.0, 1.0, "image")],
    ids=["image_only", "text_only"],
)
def test_absent_features_do_not_change_output(head: DRFHead, lam_v: float, lam_t: float, absent: str) -> None:
    torch.manual_seed(5)
    feat_v, feat_t = torch.randn(3, IMAGE_DIM), torch.randn(3, TEXT_DIM)
    lam = (torch.full((3,), lam_v), torch.full((3,), lam_t))
    reference = head.infer(feat_v, feat_t, *lam)

    for garbage in (torch.zeros, lambda *shape: torch.randn(*shape) * 1e6, lambda *shape: torch.full(shape, float("nan"))):
        if absent == "text":
            changed = head.infer(feat_v, garbage(3, TEXT_DIM), *lam)
        else:
            changed = head.infer(garbage(3, IMAGE_DIM), feat_t, *lam)
        for before, after in zip(reference, changed):
            assert torch.equal(torch.nan_to_num(before, nan=-7.0), torch.nan_to_num(after, nan=-7.0))


def test_absent_features_receive_no_gradient() -> None:
    torch.manual_seed(6)
    head = DRFHead(BASE)
    head.train()
    feat_v = torch.randn(16, IMAGE_DIM, requires_grad=True)
    feat_t = torch.randn(16, TEXT_DIM, requires_grad=True)
    lam_v = torch.ones(16)
    lam_t = torch.ones(16)
    lam_t[:4] = 0.0
    for _ in range(3):
        head(feat_v.detach(), feat_t.detach(), lam_v, lam_t)

    output = head(feat_v, feat_t, lam_v, lam_t)
    (output.logits.sum() + sum(output.losses.values())).backward()

    assert feat_t.grad is not None
    assert torch.count_nonzero(feat_t.grad[:4]) == 0
    assert torch.count_nonzero(feat_t.grad[4:]) > 0


def test_quality_nan_where_undefined(head: DRFHead) -> None:
    lam_v = torch.tensor([1.0, 1.0, 0.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0])

    _, quality, _, _ = head.infer(torch.randn(3, IMAGE_DIM), torch.randn(3, TEXT_DIM), lam_v, lam_t)

    defined = ~torch.isnan(quality)
    # Columns: log_p_v, log_p_t, log_p_v_to_t, log_p_t_to_v.
    assert defined.tolist() == [[True, True, True, True], [True, False, True, False], [False, True, False, True]]


def test_infer_output_shapes_and_types(head: DRFHead) -> None:
    probs, quality, weights, low_quality = head.infer(torch.randn(6, IMAGE_DIM), torch.randn(6, TEXT_DIM), 1.0, 1.0)

    assert probs.shape == (6, 3)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    assert quality.shape == (6, 4)
    assert quality.dtype == torch.float32
    assert weights.shape == (6, 3)
    assert weights.dtype == torch.float32
    assert low_quality.shape == (6, 2)
    assert low_quality.dtype == torch.bool


def test_infer_matches_eval_forward(head: DRFHead) -> None:
    feat_v, feat_t = torch.randn(4, IMAGE_DIM), torch.randn(4, TEXT_DIM)
    lam_v, lam_t = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0, 1.0])

    output = head(feat_v, feat_t, lam_v, lam_t)
    probs, _, weights, _ = head.infer(feat_v, feat_t, lam_v, lam_t)

    assert torch.equal(probs, output.probs)
    assert torch.equal(weights, output.branch_weights)


def test_infer_does_not_touch_queues() -> None:
    head = make_trained_head()
    head.train()
    before = head.queue_v.stored().clone()

    head.infer(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), 1.0, 1.0)

    assert torch.equal(head.queue_v.stored(), before)


def test_low_quality_flags_far_features(head: DRFHead) -> None:
    head_with_thresholds = make_trained_head()
    head_with_thresholds.set_low_quality_thresholds(-1e3, -1e3)
    feat_v = torch.randn(2, IMAGE_DIM)
    feat_v[1] = 1e4
    lam_v = torch.ones(2)
    lam_t = torch.tensor([1.0, 0.0])

    _, _, _, low_quality = head_with_thresholds.infer(feat_v, torch.randn(2, TEXT_DIM), lam_v, lam_t)

    assert low_quality[:, 0].tolist() == [False, True]
    # An absent text is never flagged.
    assert not bool(low_quality[1, 1])


def test_far_features_give_finite_outputs(head: DRFHead) -> None:
    for normalize in (False, True):
        config = dataclasses.replace(BASE, normalize_weights=normalize)
        far_head = make_trained_head(config)
        probs, quality, weights, _ = far_head.infer(
            torch.full((3, IMAGE_DIM), 1e8), torch.full((3, TEXT_DIM), -1e8), 1.0, 1.0
        )

        assert torch.isfinite(probs).all()
        assert torch.isfinite(quality).all()
        assert torch.isfinite(weights).all()


def test_training_step_fills_then_gates_queues() -> None:
    torch.manual_seed(7)
    head = DRFHead(dataclasses.replace(BASE, queue_size=32))
    head.train()

    head(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))
    assert len(head.queue_v) == 16
    head(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))
    assert len(head.queue_v) == 32
    assert head.queue_v.is_full

    before = head.queue_v.stored().clone()
    head(torch.full((16, IMAGE_DIM), 1e3), torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))
    assert torch.equal(head.queue_v.stored(), before)


def test_training_step_skips_absent_features_in_queue() -> None:
    head = DRFHead(BASE)
    head.train()
    lam_t = torch.zeros(16)
    lam_t[:5] = 1.0

    head(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), torch.ones(16), lam_t)

    assert len(head.queue_v) == 16
    assert len(head.queue_t) == 5


def test_freeze_statistics_stores_queue_moments() -> None:
    head = make_trained_head()
    queued = head.queued_features(head.queue_t)
    mu = queued.mean(0)
    sigma = torch.sqrt(((queued - mu) ** 2).sum(1).mean())

    assert queued.shape == (BASE.queue_size, BASE.d)
    assert torch.allclose(head.mu_t, mu, atol=1e-6)
    assert torch.allclose(head.sigma_t, sigma)
    stored_log_p = log_gaussian(queued, mu, sigma)
    assert math.isclose(float(head.enqueue_threshold_t), float(torch.log(stored_log_p.exp().mean())), rel_tol=1e-5)


def test_queue_stores_encoder_features_by_default() -> None:
    head = DRFHead(BASE)
    head.train()
    feat_v = torch.randn(16, IMAGE_DIM)

    head(feat_v, torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))

    assert torch.equal(head.queue_v.stored(), feat_v)
    assert torch.allclose(head.queued_features(head.queue_v), head.project_image(feat_v))


def test_queue_stores_projected_features_when_not_reprojected() -> None:
    head = DRFHead(dataclasses.replace(BASE, reproject_queue=False))
    head.train()
    feat_v = torch.randn(16, IMAGE_DIM)

    head(feat_v, torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))

    assert head.queue_v.stored().shape == (16, BASE.d)
    assert torch.allclose(head.queue_v.stored(), head.project_image(feat_v))


def test_freeze_statistics_rejects_empty_queue() -> None:
    head = DRFHead(BASE)
    with pytest.raises(RuntimeError, match="queue contains only 0 features"):
        head.freeze_statistics()


def test_forward_rejects_sample_without_modalities(head: DRFHead) -> None:
    with pytest.raises(ValueError, match="neither an image nor a text"):
        head(torch.randn(2, IMAGE_DIM), torch.randn(2, TEXT_DIM), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))


def test_infer_exports_with_constant_lambda(head: DRFHead) -> None:
    class ImageOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, feat_v: torch.Tensor, feat_t: torch.Tensor):  # type: ignore[no-untyped-def]
            return self.head.infer(feat_v, feat_t, 1.0, 0.0)

    batch = torch.export.Dim("batch")
    program = torch.export.export(
        ImageOnly().eval(),
        (torch.randn(3, IMAGE_DIM), torch.zeros(3, TEXT_DIM)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    feat_v = torch.randn(5, IMAGE_DIM)
    exported = program.module()(feat_v, torch.zeros(5, TEXT_DIM))
    eager = head.infer(feat_v, torch.zeros(5, TEXT_DIM), 1.0, 0.0)

    for got, expected in zip(exported, eager):
        assert torch.allclose(torch.nan_to_num(got.float(), nan=0.0), torch.nan_to_num(expected.float(), nan=0.0))


# -- ablation switches ---------------------------------------------------------------------


def run_training_step(config: DRFConfig) -> tuple[DRFHead, dict[str, torch.Tensor]]:
    torch.manual_seed(8)
    head = DRFHead(config)
    head.train()
    output = None
    for _ in range(3):
        output = head(torch.randn(16, IMAGE_DIM), torch.randn(16, TEXT_DIM), torch.ones(16), torch.ones(16))
    assert output is not None
    return head, output.losses


def test_ablation_all_losses_present_by_default() -> None:
    _, losses = run_training_step(BASE)

    assert set(losses) == {"dis", "rec_s_v_to_t", "rec_s_t_to_v", "rec_d_v_to_t", "rec_d_t_to_v"}


@pytest.mark.parametrize(
    ("switch", "removed"),
    [
        ("sample_recovery", {"rec_s_v_to_t", "rec_s_t_to_v"}),
        ("distribution_recovery", {"rec_d_v_to_t", "rec_d_t_to_v"}),
        ("distribution_constraint", {"dis"}),
    ],
)
def test_ablation_switch_removes_loss(switch: str, removed: set[str]) -> None:
    _, losses = run_training_step(dataclasses.replace(BASE, **{switch: False}))

    assert not removed & set(losses)
    assert len(losses) == 5 - len(removed)


def test_ablation_quality_weights_off_gives_equal_weights() -> None:
    head = make_trained_head(dataclasses.replace(BASE, quality_weights=False))
    lam_v = torch.tensor([1.0, 1.0, 0.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0])

    _, _, weights, _ = head.infer(torch.randn(3, IMAGE_DIM), torch.randn(3, TEXT_DIM), lam_v, lam_t)

    assert weights.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_ablation_quality_weights_off_normalized() -> None:
    head = make_trained_head(dataclasses.replace(BASE, quality_weights=False, normalize_weights=True))

    _, _, weights, _ = head.infer(torch.randn(2, IMAGE_DIM), torch.randn(2, TEXT_DIM), 1.0, 1.0)

    assert torch.allclose(weights, torch.full((2, 3), 1 / 3))


def test_ablation_expansion_off_keeps_one_branch() -> None:
    head = make_trained_head(dataclasses.replace(BASE, expansion=False))
    lam_v = torch.tensor([1.0, 1.0, 0.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0])

    _, _, weights, _ = head.infer(torch.randn(3, IMAGE_DIM), torch.randn(3, TEXT_DIM), lam_v, lam_t)

    assert (weights > 0).tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_ablation_normalize_weights_sums_to_one() -> None:
    head = make_trained_head(dataclasses.replace(BASE, normalize_weights=True))
    lam_v = torch.tensor([1.0, 1.0, 0.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0])

    _, _, weights, _ = head.infer(torch.randn(3, IMAGE_DIM), torch.randn(3, TEXT_DIM), lam_v, lam_t)

    assert torch.allclose(weights.sum(-1), torch.ones(3))


def test_ablation_absolute_density_weights_are_density_products() -> None:
    head = make_trained_head(dataclasses.replace(BASE, relative_density=False))

    output = head(torch.randn(2, IMAGE_DIM), torch.randn(2, TEXT_DIM), torch.ones(2), torch.ones(2))

    assert torch.allclose(output.branch_weights[:, 0], (output.log_p_v + output.log_p_t).exp())
    assert torch.allclose(output.branch_weights[:, 1], (output.log_p_v + output.log_p_v_to_t).exp())
    assert torch.allclose(output.branch_weights[:, 2], (output.log_p_t_to_v + output.log_p_t).exp())


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        DRFConfig(image_dim=4, text_dim=4, queue_size=1)
    with pytest.raises(ValueError, match="dropout"):
        DRFConfig(image_dim=4, text_dim=4, dropout=1.0)


def test_config_round_trips_through_dict() -> None:
    config = dataclasses.replace(BASE, expansion=False, normalize_weights=True)

    assert DRFConfig.from_dict(config.to_dict()) == config


def test_config_from_dict_rejects_unknown_field() -> None:
    values = BASE.to_dict() | {"temperature": 2.0}
    with pytest.raises(ValueError, match="temperature"):
        DRFConfig.from_dict(values)
