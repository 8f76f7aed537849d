"""Small heads on top of the representation y = f(x)."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLR head g: Linear(d, h) - BN - ReLU - Linear(h, out). Stays on the server."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden, out_dim

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class RotationPredictor(nn.Module):
    """Watermark predictor: an MLP on the representation that tells a rotation in [0, 180)
    from one in [180, 360). Trained jointly with the victim (and, unlike the reference code,
    actually put in the optimiser)."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, n_classes: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, n_classes),
        )
        self.in_dim, self.hidden_dim, self.n_classes = in_dim, hidden_dim, n_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)
