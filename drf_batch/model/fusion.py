"""Three-branch expansion and quality-weighted fusion (the fused feature M of DRF).

A sample expands into three image–text pairs that share one three-layer MLP F:
    M = λ_vλ_t·p_v·p_t·F([f_v, f_t]) + λ_v·p_v·p_v→t·F([f_v, f_v→t]) + λ_t·p_t→v·p_t·F([f_t→v, f_t]).
Branch weights are formed as exp of sums of log densities. The log densities are at most
-log(sqrt(2 pi) sigma), and quality.SIGMA_FLOOR keeps sigma >= 1e-6, so a weight stays below
about 2e11 and never overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BRANCHES = ("paired", "image", "text")


class FusionMLP(nn.Module):
    """F: the three-layer MLP over a concatenated (image, text) pair, shared by all branches."""

    def __init__(self, d: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(2 * d, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )

    def forward(self, image_feature: Tensor, text_feature: Tensor) -> Tensor:
        return self.layers(torch.cat([image_feature, text_feature], dim=-1))


def branch_availability(lam_v: Tensor, lam_t: Tensor, *, expansion: bool) -> Tensor:
    """Return the 0/1 mask [B, 3] of the (paired, image, text) branches that a sample uses.

    With expansion, the image branch needs only the image and the text branch only the text.
    Without it, a sample uses one branch: the paired one when both modalities are present,
    otherwise the branch whose missing half the converter recovers.
    """
    paired = lam_v * lam_t
    if expansion:
        image = lam_v
        text = lam_t
    else:
        image = lam_v * (1.0 - lam_t)
        text = lam_t * (1.0 - lam_v)
    return torch.stack([paired, image, text], dim=-1)


# NOTE: converter outputs regress towards the target distribution's mean, so recovered features
# are denser than real ones, and the branches that contain one outweigh the paired branch on clean
# posts. In the packaged default model on MVSA-Single test posts, mean log p is -4.06 (f_v) and
# -4.01 (f_t) but -3.17 (f_v→t) and -3.47 (f_t→v), and the mean normalised weights are 0.19
# (paired), 0.44 (image) and 0.37 (text).


def branch_weights(log_weights: Tensor, available: Tensor, *, normalize: bool) -> Tensor:
    """Return fusion weights [B, 3] from log weights [B, 3]; unavailable branches get weight 0.

    Without normalisation a weight is exp(log weight). With normalisation the weights of a sample
    are a softmax over its available branches, so they sum to 1.
    """
    is_available = available > 0.5
    if not normalize:
        return torch.where(is_available, torch.exp(log_weights), torch.zeros_like(log_weights))

    masked = torch.where(is_available, log_weights, torch.full_like(log_weights, float("-inf")))
    shifted = masked - masked.amax(dim=-1, keepdim=True)
    unnormalized = torch.where(is_available, torch.exp(shifted), torch.zeros_like(shifted))
    # The largest available branch contributes exp(0) = 1, so the sum is at least 1 whenever a
    # branch is available; the floor only keeps a sample without any branch at 0 instead of NaN.
    return unnormalized / unnormalized.sum(dim=-1, keepdim=True).clamp_min(1e-30)
