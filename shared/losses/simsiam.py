"""SimSiam's symmetrised negative cosine (Chen & He) with stop-gradient on the targets.

``simsiam(p1, z2, p2, z1) = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, where p = predictor(z).
For stealing, z1 = stolen output, z2 = victim answer (a constant anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simsiam(p1: torch.Tensor, z2: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    for a, b in ((p1, z2), (p2, z1)):
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"simsiam needs (B, D) pairs of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean() + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) / 2
