"""The legitimate-user profile that calibrates proof of work: its schema, saving and loading.

The profile is the upper envelope over recorded legitimate users (``python -m testbed.profile``):
expected coverage C_hat(Q) after Q images, similar-query rate, volume, with the SimHash and
similarity settings it was recorded with. It is saved as JSON and loaded by the ``pow``
defence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class LshSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperplanes: int = 12
    hash_sets: int = 20
    center: list[float] | None = Field(default=None, description="mean representation subtracted before hashing")


class SimilaritySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    space: Literal["projection", "representation"] = "projection"
    metric: Literal["cosine", "l2"] = "cosine"
    tau: float = 0.93


class LegitProfile(BaseModel):
    """What a legitimate account looks like (upper envelope over the recorded legitimate users)."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    lsh: LshSpec = Field(default_factory=LshSpec)
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec)
    images: list[int] = Field(min_length=1, description="grid of image counts Q")
    coverage: list[float] = Field(min_length=1, description="C_hat(Q): max coverage of a legitimate user after Q images")
    similar_rate: float = Field(ge=0, le=1, description="max share of a legitimate user's images that were similar-query hits")
    volume: int = Field(ge=1, description="max images a legitimate user sent")
    source: dict = Field(default_factory=dict, description="how it was recorded")

    def expected_coverage(self, q: float) -> float:
        """C_hat(Q), linear in between, flat past the last recorded point (a narrow task saturates)."""
        return float(np.interp(q, self.images, self.coverage, left=0.0, right=self.coverage[-1]))

    @classmethod
    def load(cls, path: str | Path) -> LegitProfile:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"legitimate profile {path} not found (record one: python -m testbed.profile)")
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as e:
            raise ValueError(f"legitimate profile {path} is invalid: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path
