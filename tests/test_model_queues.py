"""Feature queues: statistics, FIFO order and the density-gated enqueue."""

from __future__ import annotations

import math

import pytest
import torch

from drf_batch.model.quality import log_gaussian
from drf_batch.model.queues import FeatureQueue, queue_statistics


def test_queue_statistics_mean_and_scalar_sigma() -> None:
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])

    mu, sigma = queue_statistics(features)

    assert torch.allclose(mu, torch.tensor([1.0, 2.0]))
    # Every feature is at squared distance 1 + 4 = 5 from the mean.
    assert sigma.dim() == 0
    assert math.isclose(float(sigma), math.sqrt(5.0), rel_tol=1e-6)


def test_queue_statistics_random_matches_definition() -> None:
    torch.manual_seed(0)
    features = torch.randn(100, 16) * 3 + 1

    mu, sigma = queue_statistics(features)
    expected_sigma = torch.sqrt(((features - features.mean(0)) ** 2).sum(1).mean())

    assert torch.allclose(mu, features.mean(0))
    assert torch.allclose(sigma, expected_sigma)


def test_queue_statistics_rejects_empty() -> None:
    with pytest.raises(ValueError, match="shape"):
        queue_statistics(torch.zeros(0, 4))


def test_queue_fills_unconditionally_until_full() -> None:
    queue = FeatureQueue(size=4, d=2)
    outlier = torch.tensor([[1e3, 1e3]])

    assert queue.enqueue(torch.zeros(2, 2)) == 2
    assert queue.enqueue(outlier) == 1
    assert len(queue) == 3
    assert torch.equal(queue.stored()[2], outlier[0])


def test_queue_push_is_fifo() -> None:
    queue = FeatureQueue(size=3, d=1)
    queue.push(torch.tensor([[1.0], [2.0], [3.0]]))
    queue.push(torch.tensor([[4.0]]))

    assert len(queue) == 3
    assert sorted(queue.stored().flatten().tolist()) == [2.0, 3.0, 4.0]


def test_gated_enqueue_accepts_only_above_mean_density() -> None:
    torch.manual_seed(0)
    queue = FeatureQueue(size=64, d=4)
    queue.push(torch.randn(64, 4))
    stored_before = queue.stored().clone()
    mu, sigma = queue.statistics()
    threshold = torch.log(log_gaussian(stored_before, mu, sigma).exp().mean())

    near = mu.unsqueeze(0) + 0.01
    far = mu.unsqueeze(0) + 10.0
    assert float(log_gaussian(near, mu, sigma)[0]) > float(threshold)
    assert float(log_gaussian(far, mu, sigma)[0]) < float(threshold)

    accepted = queue.enqueue(torch.cat([far, near, far]))

    assert accepted == 1
    assert len(queue) == 64
    stored = queue.stored()
    assert any(torch.allclose(row, near[0]) for row in stored)
    assert not any(torch.allclose(row, far[0]) for row in stored)
    # The accepted feature replaced exactly the oldest one.
    assert torch.equal(stored[1:], stored_before[1:])


def test_gated_enqueue_rejects_all_outliers() -> None:
    torch.manual_seed(1)
    queue = FeatureQueue(size=16, d=3)
    queue.push(torch.randn(16, 3))
    before = queue.stored().clone()

    assert queue.enqueue(torch.full((5, 3), 100.0)) == 0
    assert torch.equal(queue.stored(), before)


def test_queue_features_are_detached() -> None:
    queue = FeatureQueue(size=4, d=2)
    features = torch.ones(2, 2, requires_grad=True)
    queue.enqueue(features * 2)

    assert not queue.stored().requires_grad
