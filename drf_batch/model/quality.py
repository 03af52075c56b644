"""Gaussian quality of a feature under a modality's queue distribution, in log space.

DRF scores a feature f against a modality with the one-dimensional Gaussian density applied to
the distance from the queue mean: p(f, mu, sigma) = exp(-||f - mu||^2 / (2 sigma^2)) / (sqrt(2 pi) sigma),
where sigma is one scalar per modality. This module works with log p, so features far from the
mean give large negative values instead of a density that underflows to 0. Values are clamped at
LOG_P_FLOOR, so even a squared distance that overflows float32 gives a finite result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

SIGMA_FLOOR = 1e-6
"""Smallest spread used in a density, so a collapsed queue gives finite values."""

LOG_P_FLOOR = -1e30
"""Lowest log value returned. A squared distance that overflows float32 would give -inf, and -inf
turns into NaN in the softmax and the subtractions of the fusion."""


def squared_distance(f: Tensor, mu: Tensor) -> Tensor:
    """Return ||f - mu||^2 over the last axis."""
    return (f - mu).pow(2).sum(dim=-1)


def log_gaussian_kernel(f: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Return -||f - mu||^2 / (2 sigma^2), the log of p(f)/p(mu): 0 at the mean, negative elsewhere."""
    sigma = sigma.clamp_min(SIGMA_FLOOR)
    value = -squared_distance(f, mu) / (2.0 * sigma * sigma)
    return torch.nan_to_num(value, nan=LOG_P_FLOOR, neginf=LOG_P_FLOOR).clamp_min(LOG_P_FLOOR)


def log_gaussian(f: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Return log p(f, mu, sigma) = -||f - mu||^2 / (2 sigma^2) - log(sqrt(2 pi) sigma)."""
    sigma = sigma.clamp_min(SIGMA_FLOOR)
    value = log_gaussian_kernel(f, mu, sigma) - LOG_SQRT_2PI - torch.log(sigma)
    return value.clamp_min(LOG_P_FLOOR)


def log_mean_density(log_p: Tensor) -> Tensor:
    """Return log(mean_j p_j) from the values log p_j, computed with logsumexp."""
    return torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
