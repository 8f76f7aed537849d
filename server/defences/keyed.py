"""Keyed randomness for defences: the same (secret, account, image) always draws the same numbers.

The image is identified by the SHA-256 of its decoded, preprocessed pixels (uint8 HWC), so
re-encoding the same picture (other PNG compression, WebP lossless, a data: URI) does not change
the draw: asking twice, or averaging many asks, gains nothing.
"""

from __future__ import annotations

import numpy as np

from shared.images import image_digests
from shared.transforms import keyed_rng

__all__ = ["image_digests", "keyed_normal"]


def keyed_normal(secret: bytes, purpose: str, account: str, digests: list[str], dim: int,
                 mean: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    """(N, dim) float32 Gaussian draws, one keyed stream per (purpose, account, image)."""
    out = np.empty((len(digests), dim), dtype=np.float32)
    for i, d in enumerate(digests):
        out[i] = keyed_rng(secret, purpose, account, d).standard_normal(dim, dtype=np.float32)
    return out * np.float32(sigma) + np.float32(mean)
