"""NT-Xent / InfoNCE over two aligned batches (SimCLR; also the stealing paper's InfoNCE).

Stack [a; b] (2B rows), L2-normalise, cosine similarities / T with the diagonal removed; the
positive of a_i is b_i and vice versa, the other 2B - 2 rows are negatives; cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"nt_xent needs two (B, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
