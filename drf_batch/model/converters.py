"""Modality converters C_v→t and C_t→v: two-layer MLPs that recover one modality's feature from
the other's, in the shared width d."""

from __future__ import annotations

from torch import Tensor, nn


class ModalityConverter(nn.Module):
    """Two-layer MLP d → d → d with a GELU between the layers."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, f: Tensor) -> Tensor:
        return self.layers(f)
