"""Soft nearest-neighbour loss (Frosst et al.), as used for stealing (reference T = 100).

Stack [S; V] (2B rows) with labels arange(B) twice; squared Euclidean distances d_ij; weights
exp(-d_ij / T) without the diagonal; loss = -mean_i log(sum_{j: same label} w_ij / sum_j w_ij).
"""

from __future__ import annotations

import torch

TEMPERATURE = 100.0


def soft_nn(stolen: torch.Tensor, victim: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    if stolen.shape != victim.shape or stolen.ndim != 2:
        raise ValueError(f"soft_nn needs two (B, D) tensors of one shape, got {tuple(stolen.shape)} and {tuple(victim.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = stolen.shape[0]
    x = torch.cat([stolen, victim])
    labels = torch.arange(n, device=x.device).repeat(2)
    d = torch.cdist(x, x).pow(2)
    logits = -d / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye
    log_all = torch.logsumexp(logits, dim=1)
    log_same = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    return (log_all - log_same).mean()
