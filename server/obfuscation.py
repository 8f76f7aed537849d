"""Serving obfuscation: one fixed shared.transforms transform applied to every answer of a server.

Used to stand up *suspects* (a stolen copy served behind permutation, padding, affine or binary
outputs) for the attacker and defender issues. Representations and projections each get their own
transform, both drawn from ``seed``; /v1/models reports the transformed dimensions.
"""

from __future__ import annotations

import numpy as np

from server.config import Obfuscation
from shared.transforms import OutputTransform, make_transform


class Obfuscator:
    def __init__(self, spec: Obfuscation, rep_dim: int, proj_dim: int | None) -> None:
        self.spec = spec
        self.representation = self._make("representation", rep_dim)
        self.projection = self._make("projection", proj_dim) if proj_dim else None

    def _make(self, what: str, dim: int) -> OutputTransform:
        rng = np.random.default_rng([self.spec.seed, 0 if what == "representation" else 1])
        return make_transform(self.spec.kind, dim, rng, pad=self.spec.pad if self.spec.kind == "pad_shuffle" else 0,
                              pad_secret=rng.bytes(32))

    def apply(self, output: str, y: np.ndarray, digests: list[str]) -> np.ndarray:
        t = self.representation if output == "representation" else self.projection
        if t is None:
            raise ValueError(f"no {output} transform: the model has no projection head")
        return t.apply(y, digests if t.pad else None)

    def describe(self) -> dict:
        return {"kind": self.spec.kind, "representation_dim": self.representation.out_dim}
