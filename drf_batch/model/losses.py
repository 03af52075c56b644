"""DRF training losses: the distribution constraint L_dis and the recovery losses L^s and L^d.

Each function returns the batch mean of the per-sample loss, so the losses keep their size when
the batch size changes. The λ factors are 1 for a present modality and 0 for an absent one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from drf_batch.model.queues import queue_statistics

NORM_EPSILON = 1e-12
"""Added under the square root of each L2 norm so its gradient stays finite at distance 0."""

EXP_LINEAR_FROM = 30.0
"""Exponent above which L_dis grows linearly instead of exponentially (see bounded_exp)."""


def l2_norm(x: Tensor) -> Tensor:
    """Return ||x||_2 over the last axis."""
    return torch.sqrt(x.pow(2).sum(dim=-1) + NORM_EPSILON)


def bounded_exp(x: Tensor, limit: float = EXP_LINEAR_FROM) -> Tensor:
    """Return exp(x) up to x = limit and its tangent line exp(limit)·(1 + x − limit) above it.

    The exponent of L_dis is bounded only by ||μ_v − μ_t||, so a feature that sits near the other
    modality's mean can overflow float32 (exp(x) is inf above x ≈ 88). The tangent keeps the value
    finite and the gradient pointing the same way.
    """
    clipped = x.clamp_max(limit)
    return torch.where(x <= limit, torch.exp(clipped), math.exp(limit) * (1.0 + x - limit))


def distribution_constraint(
    f_v: Tensor, f_t: Tensor, mu_v: Tensor, mu_t: Tensor, lam_v: Tensor, lam_t: Tensor
) -> Tensor:
    """Return L_dis = λ_v·exp(||f_v − μ_v|| − ||f_v − μ_t||) + λ_t·exp(||f_t − μ_t|| − ||f_t − μ_v||).

    It pulls each feature towards its own modality's queue mean and away from the other mean.
    """
    zero = torch.zeros_like(lam_v)
    # torch.where, not a product with λ, so that an absent modality contributes exactly 0 even
    # when its placeholder feature would give a huge exponent.
    per_sample_v = torch.where(lam_v > 0.5, bounded_exp(l2_norm(f_v - mu_v) - l2_norm(f_v - mu_t)), zero)
    per_sample_t = torch.where(lam_t > 0.5, bounded_exp(l2_norm(f_t - mu_t) - l2_norm(f_t - mu_v)), zero)
    return (per_sample_v + per_sample_t).mean()


def sample_recovery(converted: Tensor, target: Tensor, lam_v: Tensor, lam_t: Tensor) -> Tensor:
    """Return L^s = λ_v·λ_t·||C(f_source) − f_target||, e.g. L^s_v→t with converted = C_v→t(f_v).

    Only samples with both modalities contribute; the mean is over the whole batch.
    """
    return (lam_v * lam_t * l2_norm(converted - target)).mean()


def distribution_recovery(converted_queue: Tensor, mu_target: Tensor, sigma_target: Tensor) -> Tensor:
    """Return L^d = ||μ_conv − μ_target|| + |σ_conv − σ_target|.

    `converted_queue` is a converter applied to every feature of the source queue, e.g.
    C_v→t(Q_v), whose mean and scalar spread are μ_v→t and σ_v→t.
    """
    mu_converted, sigma_converted = queue_statistics(converted_queue)
    return l2_norm(mu_converted - mu_target) + (sigma_converted - sigma_target).abs()
