"""InfoNCE for stealing: :func:`shared.losses.ntxent.nt_xent` with the stealing paper's T = 0.07.

Stack [S; V], L2-normalise, similarities without the diagonal; the positive of S_i is V_i and
vice versa, the other 2B - 2 rows are negatives; cross-entropy.
"""

from __future__ import annotations

import torch

from shared.losses.ntxent import nt_xent

TEMPERATURE = 0.07


def infonce(stolen: torch.Tensor, victim: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    return nt_xent(stolen, victim, temperature)
