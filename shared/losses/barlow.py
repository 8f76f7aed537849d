"""Barlow Twins (Zbontar et al.) between stolen and victim outputs (reference lambda = 0.0051).

Standardise each dimension over the batch, cross-correlation C = S^T V / B; loss = sum_i (1 - C_ii)^2
+ lambda * sum_{i != j} C_ij^2.
"""

from __future__ import annotations

import torch

LAMBDA = 0.0051


def barlow_twins(stolen: torch.Tensor, victim: torch.Tensor, lambd: float = LAMBDA, eps: float = 1e-5) -> torch.Tensor:
    if stolen.shape != victim.shape or stolen.ndim != 2:
        raise ValueError(f"barlow_twins needs two (B, D) tensors of one shape, got {tuple(stolen.shape)} and {tuple(victim.shape)}")
    if stolen.shape[0] < 2:
        raise ValueError("barlow_twins needs a batch of at least 2")
    b = stolen.shape[0]
    s = (stolen - stolen.mean(0)) / (stolen.std(0) + eps)
    v = (victim - victim.mean(0)) / (victim.std(0) + eps)
    c = s.T @ v / b
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off
