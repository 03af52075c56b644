"""Gaussian quality p(f, mu, sigma) in log space."""

from __future__ import annotations

import math

import torch

from drf_batch.model.quality import log_gaussian, log_gaussian_kernel, log_mean_density


def test_log_gaussian_matches_density_formula() -> None:
    f = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    mu = torch.tensor([0.5, 1.0, 0.0])
    sigma = torch.tensor(1.7)

    squared = ((f - mu) ** 2).sum(dim=-1)
    expected = torch.exp(-squared / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)

    assert torch.allclose(log_gaussian(f, mu, sigma).exp(), expected, rtol=1e-6)


def test_log_gaussian_kernel_is_zero_at_mean() -> None:
    mu = torch.tensor([0.3, -1.0])
    sigma = torch.tensor(0.2)

    assert float(log_gaussian_kernel(mu.unsqueeze(0), mu, sigma)[0]) == 0.0
    kernel_minus_log_p = log_gaussian_kernel(mu.unsqueeze(0) + 1, mu, sigma) - log_gaussian(mu.unsqueeze(0) + 1, mu, sigma)
    assert torch.allclose(kernel_minus_log_p, torch.log(math.sqrt(2 * math.pi) * sigma).reshape(1))


def test_log_gaussian_far_from_mean_is_finite() -> None:
    d = 256
    mu = torch.zeros(d)
    sigma = torch.tensor(1e-3)
    far = torch.stack([torch.full((d,), 1e4), torch.full((d,), 1e18), torch.full((d,), -3e38)])

    log_p = log_gaussian(far, mu, sigma)
    kernel = log_gaussian_kernel(far, mu, sigma)

    assert torch.isfinite(log_p).all()
    assert torch.isfinite(kernel).all()
    assert (log_p < -1e10).all()
    # The weight exp(log p) underflows to exactly 0, never to NaN.
    assert (log_p.exp() == 0).all()


def test_log_gaussian_collapsed_sigma_is_finite() -> None:
    f = torch.ones(2, 4)
    log_p = log_gaussian(f, torch.ones(4), torch.tensor(0.0))

    assert torch.isfinite(log_p).all()


def test_log_gaussian_gradient_far_from_mean_is_finite() -> None:
    f = torch.full((1, 8), 1e6, requires_grad=True)
    log_gaussian(f, torch.zeros(8), torch.tensor(0.5)).sum().backward()

    assert f.grad is not None
    assert torch.isfinite(f.grad).all()


def test_log_mean_density_matches_direct_mean() -> None:
    log_p = torch.tensor([-1.0, -2.0, -0.5, -4.0])

    assert torch.allclose(log_mean_density(log_p), torch.log(log_p.exp().mean()))


def test_log_mean_density_survives_underflow() -> None:
    log_p = torch.tensor([-2000.0, -2001.0])
    value = log_mean_density(log_p)

    assert torch.isfinite(value)
    assert -2001.0 < float(value) < -2000.0
