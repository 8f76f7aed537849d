"""1-D Wasserstein distance per sample: each non-negative vector is a histogram over its D bins;
normalise to mass 1, compare cumulative distributions, L1 (the W1 distance on a line of bins)."""

from __future__ import annotations

import torch


def wasserstein(stolen: torch.Tensor, victim: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    if stolen.shape != victim.shape or stolen.ndim != 2:
        raise ValueError(f"wasserstein needs two (B, D) tensors of one shape, got {tuple(stolen.shape)} and {tuple(victim.shape)}")
    p = stolen.clamp_min(0)
    q = victim.clamp_min(0)
    p = p / (p.sum(1, keepdim=True) + eps)
    q = q / (q.sum(1, keepdim=True) + eps)
    return (p.cumsum(1) - q.cumsum(1)).abs().sum(1).mean()
