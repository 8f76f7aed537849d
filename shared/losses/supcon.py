"""Supervised contrastive loss (Khosla et al.) over [S; V] with the query labels (T = 0.07).

Every row's positives are the other rows with the same label (its own victim answer included);
loss = -mean over anchors of the mean log-probability of their positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.07


def supcon(stolen: torch.Tensor, victim: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    if stolen.shape != victim.shape or stolen.ndim != 2:
        raise ValueError(f"supcon needs two (B, D) tensors of one shape, got {tuple(stolen.shape)} and {tuple(victim.shape)}")
    if labels.shape != (stolen.shape[0],):
        raise ValueError(f"supcon needs one label per row, got {tuple(labels.shape)} for {stolen.shape[0]} rows")
    n = stolen.shape[0]
    z = F.normalize(torch.cat([stolen, victim]), dim=1)
    y = labels.to(z.device).repeat(2)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    return -(log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1)).mean()
