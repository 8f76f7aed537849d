"""Output perturbations (the StolenEncoder evaluation's set): Gaussian noise, rounding, top-k.

Pure math in module functions (unit-tested); thin :class:`Defence` wrappers apply them per tier.
Noise is keyed by (server secret, account, image hash): deterministic per account and image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from server.defences.base import Defence, DefenceParams
from server.defences.keyed import keyed_normal


def round_to(y: np.ndarray, step: float | None = None, decimals: int | None = None) -> np.ndarray:
    """Quantise to a multiple of ``step`` or round to ``decimals`` decimal places."""
    if step is not None:
        return (np.round(y / step) * step).astype(np.float32)
    if decimals is None:
        raise ValueError("give step or decimals")
    return np.round(y, decimals).astype(np.float32)


def top_k(y: np.ndarray, k: int, by: Literal["magnitude", "value"] = "magnitude") -> np.ndarray:
    """Keep the ``k`` largest entries of each row (by |y| or by y), zero the rest."""
    y = np.asarray(y, dtype=np.float32)
    if k >= y.shape[1]:
        return y.copy()
    score = np.abs(y) if by == "magnitude" else y
    keep = np.argpartition(-score, k - 1, axis=1)[:, :k]
    out = np.zeros_like(y)
    np.put_along_axis(out, keep, np.take_along_axis(y, keep, axis=1), axis=1)
    return out


class GaussianNoise(Defence):
    """y + N(mean, sigma), keyed per (account, image). Paper: mean 10, sigma 1 hurt the attacker most."""

    name = "gaussian_noise"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        mean: float = 0.0
        sigma: float = Field(default=0.1, ge=0)

    async def transform(self, account, request, images, representations, projections):
        p = self.params
        if p.sigma == 0 and p.mean == 0:
            return representations
        noise = keyed_normal(self.ctx.secret, self.name, account.id, request.digests(images), representations.shape[1], p.mean, p.sigma)
        return (representations + noise).astype(np.float32)


class Rounding(Defence):
    """Round outputs to ``decimals`` places or quantise to multiples of ``step``."""

    name = "rounding"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        decimals: int | None = Field(default=None, ge=0, le=8)
        step: float | None = Field(default=None, gt=0)

        @model_validator(mode="after")
        def _one(self):
            if (self.decimals is None) == (self.step is None):
                raise ValueError("give exactly one of decimals or step")
            return self

    async def transform(self, account, request, images, representations, projections):
        return round_to(representations, self.params.step, self.params.decimals)


class TopK(Defence):
    """Sparsify: keep the k largest entries per output (by magnitude or value), zero the rest."""

    name = "topk"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        model_config = ConfigDict(extra="forbid")
        k: int = Field(ge=1)
        by: Literal["magnitude", "value"] = "magnitude"

    async def transform(self, account, request, images, representations, projections):
        return top_k(representations, self.params.k, self.params.by)
