"""Branch availability and branch weights of the three-branch fusion."""

from __future__ import annotations

import torch

from drf_batch.model.fusion import branch_availability, branch_weights

LAM_V = torch.tensor([1.0, 1.0, 0.0])
LAM_T = torch.tensor([1.0, 0.0, 1.0])


def test_availability_with_expansion() -> None:
    available = branch_availability(LAM_V, LAM_T, expansion=True)

    assert available.tolist() == [[1, 1, 1], [0, 1, 0], [0, 0, 1]]


def test_availability_without_expansion() -> None:
    available = branch_availability(LAM_V, LAM_T, expansion=False)

    assert available.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_unnormalized_weights_are_exp_of_log_weights() -> None:
    log_weights = torch.tensor([[-1.0, -2.0, -3.0]])
    weights = branch_weights(log_weights, torch.ones(1, 3), normalize=False)

    assert torch.allclose(weights, log_weights.exp())


def test_normalized_weights_sum_to_one_over_available() -> None:
    log_weights = torch.tensor([[-1.0, -2.0, -3.0], [-5.0, -1.0, 7.0]])
    available = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])

    weights = branch_weights(log_weights, available, normalize=True)

    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert torch.allclose(weights[0], torch.softmax(log_weights[0], dim=0))
    assert weights[1].tolist() == [0.0, 1.0, 0.0]


def test_weights_far_from_mean_are_finite() -> None:
    log_weights = torch.tensor([[-2e30, -1e30, -3e30], [-1e30, -1e30, -1e30]])
    available = torch.ones(2, 3)

    unnormalized = branch_weights(log_weights, available, normalize=False)
    normalized = branch_weights(log_weights, available, normalize=True)

    assert torch.isfinite(unnormalized).all()
    assert (unnormalized == 0).all()
    assert torch.isfinite(normalized).all()
    assert torch.allclose(normalized[0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(normalized[1], torch.full((3,), 1 / 3))
