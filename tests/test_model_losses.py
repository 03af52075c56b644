"""DRF losses: the distribution constraint and the sample- and distribution-based recovery terms."""

from __future__ import annotations

import math

import torch

from drf_batch.model.losses import bounded_exp, distribution_constraint, distribution_recovery, sample_recovery


def test_distribution_constraint_matches_formula() -> None:
    f_v = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    mu_v = torch.tensor([3.0, 0.0])
    mu_t = torch.tensor([0.0, 4.0])
    lam_v = torch.tensor([1.0, 1.0])
    lam_t = torch.tensor([1.0, 0.0])

    # Sample 0: f_v sits on mu_v (distance 5 to mu_t), f_t sits on mu_t (distance 5 to mu_v).
    sample_0 = math.exp(0 - 5) + math.exp(0 - 5)
    # Sample 1: only the image counts; ||(0,1)-(3,0)|| = sqrt(10), ||(0,1)-(0,4)|| = 3.
    sample_1 = math.exp(math.sqrt(10) - 3)
    expected = (sample_0 + sample_1) / 2

    value = distribution_constraint(f_v, f_t, mu_v, mu_t, lam_v, lam_t)

    assert math.isclose(float(value), expected, rel_tol=1e-5)


def test_distribution_constraint_absent_modality_has_no_gradient() -> None:
    f_v = torch.randn(3, 4, requires_grad=True)
    f_t = torch.randn(3, 4, requires_grad=True)
    lam_v = torch.tensor([1.0, 0.0, 1.0])
    lam_t = torch.tensor([1.0, 1.0, 0.0])

    distribution_constraint(f_v, f_t, torch.zeros(4), torch.ones(4), lam_v, lam_t).backward()

    assert f_v.grad is not None
    assert f_t.grad is not None
    assert torch.count_nonzero(f_v.grad[1]) == 0
    assert torch.count_nonzero(f_t.grad[2]) == 0
    assert torch.count_nonzero(f_v.grad[0]) > 0


def test_distribution_constraint_far_feature_is_finite() -> None:
    mu_v = torch.zeros(4)
    mu_t = torch.full((4,), 500.0)
    # The image feature sits on the text mean and the text feature is absent but would overflow.
    f_v = mu_t.unsqueeze(0).clone().requires_grad_(True)
    f_t = torch.zeros(1, 4, requires_grad=True)

    value = distribution_constraint(f_v, f_t, mu_v, mu_t, torch.ones(1), torch.zeros(1))
    value.backward()

    assert torch.isfinite(value)
    assert float(value.detach()) > math.exp(30)
    assert f_v.grad is not None
    assert torch.isfinite(f_v.grad).all()
    assert f_t.grad is not None
    assert torch.count_nonzero(f_t.grad) == 0


def test_bounded_exp_matches_exp_below_limit() -> None:
    x = torch.tensor([-5.0, 0.0, 29.0])

    assert torch.allclose(bounded_exp(x), torch.exp(x))


def test_bounded_exp_is_linear_above_limit() -> None:
    value = bounded_exp(torch.tensor([31.0, 1000.0]))

    assert torch.allclose(value, torch.tensor([math.exp(30) * 2, math.exp(30) * 971]))


def test_sample_recovery_is_l2_norm_on_pairs_only() -> None:
    converted = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    target = torch.zeros(3, 2)
    lam_v = torch.tensor([1.0, 1.0, 0.0])
    lam_t = torch.tensor([1.0, 0.0, 1.0])

    value = sample_recovery(converted, target, lam_v, lam_t)

    # Only sample 0 has both modalities: ||(3, 4)|| = 5, averaged over the batch of 3.
    assert math.isclose(float(value), 5.0 / 3.0, rel_tol=1e-5)


def test_sample_recovery_zero_for_exact_recovery() -> None:
    target = torch.randn(4, 8)
    value = sample_recovery(target.clone(), target, torch.ones(4), torch.ones(4))

    assert float(value) < 1e-5


def test_distribution_recovery_matches_mean_and_sigma_terms() -> None:
    converted_queue = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    # Converted mean (1, 2), converted sigma sqrt(5).
    mu_target = torch.tensor([4.0, 6.0])
    sigma_target = torch.tensor(1.0)

    value = distribution_recovery(converted_queue, mu_target, sigma_target)

    expected = 5.0 + abs(math.sqrt(5.0) - 1.0)
    assert math.isclose(float(value), expected, rel_tol=1e-5)


def test_distribution_recovery_zero_for_matching_distribution() -> None:
    torch.manual_seed(0)
    queue = torch.randn(32, 6)
    mu = queue.mean(0)
    sigma = torch.sqrt(((queue - mu) ** 2).sum(1).mean())

    assert float(distribution_recovery(queue, mu, sigma)) < 1e-4


def test_distribution_recovery_gradient_reaches_converter() -> None:
    converter = torch.nn.Linear(3, 3)
    queue = torch.randn(16, 3)

    distribution_recovery(converter(queue), torch.full((3,), 5.0), torch.tensor(2.0)).backward()

    assert converter.weight.grad is not None
    assert torch.count_nonzero(converter.weight.grad) > 0
