"""B4B (Bucks for Buckets, Dubinski et al. NeurIPS 2023): coverage-priced noise + per-account transforms.

Coverage: SimHash LSH with ``hyperplanes`` random hyperplanes (2**hyperplanes buckets) in each of
``hash_sets`` independent sets; an account's coverage is the share of buckets it has hit, averaged
over the sets. The buckets live in the store as ONE bitmap per account (bit ``s * 2**h + bucket``),
set by SETBIT in the request's atomic commit, so every replica sees the same coverage.

Noise: sigma(c) = lambda * (exp(ln(alpha / lambda) * c / beta) - 1)  (alpha=1, beta=0.8, lambda=1e-7:
~0 below 50 % coverage, alpha at c = beta), drawn keyed by (account, image).

Transformation: a per-account map (affine, pad + shuffle, binary, permute) keyed by
HMAC(secret, account), so answers of two sybil accounts live in incompatible spaces.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from server.defences.base import Defence, DefenceParams
from server.defences.keyed import keyed_normal
from server.defences.keys import Gauges
from shared.transforms import OutputTransform, keyed_rng, make_transform


def sigma_of_coverage(c: float | np.ndarray, alpha: float = 1.0, beta: float = 0.8, lam: float = 1e-7) -> float | np.ndarray:
    """B4B's cost function: lambda * (exp(ln(alpha/lambda) * c / beta) - 1), c and beta as fractions."""
    return lam * (np.exp(math.log(alpha / lam) * np.asarray(c, dtype=np.float64) / beta) - 1.0)


def simhash_planes(secret: bytes, dim: int, hyperplanes: int = 12, hash_sets: int = 20) -> np.ndarray:
    """(dim, hash_sets * hyperplanes) Gaussian hyperplane normals, keyed by the server secret."""
    return keyed_rng(secret, "b4b-simhash", str(dim), str(hyperplanes), str(hash_sets)).standard_normal(
        (dim, hash_sets * hyperplanes), dtype=np.float32)


def simhash_buckets(y: np.ndarray, planes: np.ndarray, hyperplanes: int, center: np.ndarray | None = None) -> np.ndarray:
    """(n, hash_sets) bucket index in [0, 2**hyperplanes) of each vector in each hash set."""
    y = np.asarray(y, dtype=np.float32)
    if center is not None:
        y = y - center
    signs = (y @ planes > 0).reshape(len(y), -1, hyperplanes)
    return (signs.astype(np.int64) << np.arange(hyperplanes)).sum(axis=2)


def bucket_offsets(buckets: np.ndarray, hyperplanes: int) -> np.ndarray:
    """Bitmap offsets (set * 2**h + bucket), unique, sorted."""
    sets = np.arange(buckets.shape[1]) << hyperplanes
    return np.unique((buckets + sets).ravel())


def coverage_of_bits(bits: np.ndarray, hyperplanes: int, hash_sets: int) -> float:
    """Mean share of buckets hit, from a (hash_sets * 2**h,) 0/1 array."""
    return float(bits[:hash_sets << hyperplanes].reshape(hash_sets, 1 << hyperplanes).mean(axis=1).mean())


def bitmap_to_bits(bitmap: bytes, nbits: int) -> np.ndarray:
    """Redis bitmap bytes (bit 0 = MSB of byte 0) -> (nbits,) uint8 array."""
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="big") if bitmap else np.zeros(0, np.uint8)
    out = np.zeros(nbits, np.uint8)
    out[:min(nbits, len(bits))] = bits[:nbits]
    return out


class CoverageTracker:
    """Online coverage of one stream (offline tools: the recorder, the coverage bench)."""

    def __init__(self, planes: np.ndarray, hyperplanes: int, hash_sets: int, center: np.ndarray | None = None) -> None:
        self.planes, self.h, self.sets, self.center = planes, hyperplanes, hash_sets, center
        self.bits = np.zeros(hash_sets << hyperplanes, np.uint8)

    def add(self, y: np.ndarray) -> float:
        self.bits[bucket_offsets(simhash_buckets(y, self.planes, self.h, self.center), self.h)] = 1
        return self.coverage

    @property
    def coverage(self) -> float:
        return coverage_of_bits(self.bits, self.h, self.sets)


class B4B(Defence):
    name = "b4b"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        hyperplanes: int = Field(default=12, ge=1, le=20)
        hash_sets: int = Field(default=20, ge=1, le=256)
        alpha: float = Field(default=1.0, gt=0)
        beta: float = Field(default=0.8, gt=0, le=1, description="coverage (fraction) where sigma reaches alpha")
        lam: float = Field(default=1e-7, gt=0, description="lambda of the cost function")
        noise: bool = True
        min_sigma: float = Field(default=1e-4, ge=0, description="below this sigma no noise is drawn (it would be "
                                 "lost in float32 rounding anyway; saves the keyed draws)")
        transform: Literal["none", "affine", "pad_shuffle", "binary", "permute"] = "none"
        pad: int = Field(default=0, ge=0, le=4096, description="pad_shuffle: extra dims; binary: extra code bits")
        center_from: Path | None = Field(default=None, description="JSON whose lsh.center (a recorded profile) or center "
                                         "is the mean representation subtracted before hashing")

    def __init__(self, ctx, params) -> None:
        super().__init__(ctx, params)
        if params.transform == "pad_shuffle" and params.pad <= 0:
            raise ValueError("transform pad_shuffle needs pad > 0")
        if params.lam >= params.alpha:
            raise ValueError("lam must be smaller than alpha")
        self.center: np.ndarray | None = None
        if params.center_from is not None:
            if not params.center_from.is_file():
                raise ValueError(f"center_from {params.center_from} not found")
            data = json.loads(params.center_from.read_text())
            c = (data.get("lsh") or {}).get("center") or data.get("center")
            if not c:
                raise ValueError(f"center_from {params.center_from} has no lsh.center / center")
            self.center = np.asarray(c, np.float32)
        self._planes: dict[int, np.ndarray] = {}
        self._transforms: OrderedDict[tuple[str, int], OutputTransform] = OrderedDict()

    def planes(self, dim: int) -> np.ndarray:
        if dim not in self._planes:
            self._planes[dim] = simhash_planes(self.ctx.secret, dim, self.params.hyperplanes, self.params.hash_sets)
        return self._planes[dim]

    def account_transform(self, account_id: str, dim: int) -> OutputTransform:
        key = (account_id, dim)
        t = self._transforms.get(key)
        if t is None:
            kind = self.params.transform
            if kind == "none":
                raise ValueError("b4b is configured without an output transform (transform: none)")
            rng = keyed_rng(self.ctx.secret, "b4b-transform", kind, account_id)
            t = make_transform(kind, dim, rng, pad=self.params.pad,
                               pad_secret=keyed_rng(self.ctx.secret, "b4b-pad", account_id).bytes(32))
            self._transforms[key] = t
            if len(self._transforms) > 4096:
                self._transforms.popitem(last=False)
        return t

    async def transform(self, account, request, images, representations, projections):
        p = self.params
        y = np.asarray(representations, dtype=np.float32)
        center = self.center
        if center is not None and center.shape != (y.shape[1],):
            raise ValueError(f"b4b center has {center.shape[0]} values, representations have {y.shape[1]}")
        offsets = bucket_offsets(simhash_buckets(y, self.planes(y.shape[1]), p.hyperplanes, center), p.hyperplanes)
        nbits = p.hash_sets << p.hyperplanes
        bits = bitmap_to_bits(await self.ctx.store.coverage_bitmap(account.id), nbits)
        bits[offsets] = 1
        c = coverage_of_bits(bits, p.hyperplanes, p.hash_sets)
        sigma = float(sigma_of_coverage(c, p.alpha, p.beta, p.lam)) if p.noise else 0.0
        request.record.coverage_bits.extend(int(o) for o in offsets)
        request.record.gauges.update({Gauges.B4B_COVERAGE: round(c, 6), Gauges.B4B_SIGMA: sigma})
        self.ctx.observe(Gauges.B4B_COVERAGE, c)
        self.ctx.observe(Gauges.B4B_SIGMA, sigma)
        if sigma > 0 and sigma >= p.min_sigma:
            y = y + keyed_normal(self.ctx.secret, self.name, account.id, request.digests(images), y.shape[1], 0.0, sigma)
        if p.transform != "none":
            digests = request.digests(images) if p.transform == "pad_shuffle" else None
            y = self.account_transform(account.id, y.shape[1]).apply(y, digests)
        return y.astype(np.float32)
