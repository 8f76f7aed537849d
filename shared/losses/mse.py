"""MSE on raw vectors: the simplest direct-extraction loss (best with few queries in the stealing paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(stolen: torch.Tensor, victim: torch.Tensor) -> torch.Tensor:
    if stolen.shape != victim.shape:
        raise ValueError(f"mse needs outputs of one shape, got {tuple(stolen.shape)} and {tuple(victim.shape)}")
    return F.mse_loss(stolen, victim)
