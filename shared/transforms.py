"""Keyed output transformations of representations (pure numpy).

Used by B4B's per-account transformations on the server (keyed by HMAC(secret, account)), by an
attacker obfuscating a stolen copy it serves, and by the defender's tests of alignment. Kinds:

- ``permute``: y[perm] (a permutation of dimensions);
- ``pad_shuffle``: append ``pad`` random dimensions (keyed, fixed per input so averaging cannot
  remove them), then permute;
- ``affine``: y @ A + b with a random well-conditioned A (orthogonal times positive scales);
- ``binary``: sign(y @ W) in {-1, +1}^(dim + pad) with a random Gaussian W (SimHash code: angles
  between outputs survive, the numbers do not; B4B's binarisation);
- ``compose``: several of these in order.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["permute", "pad_shuffle", "affine", "binary"]


def keyed_rng(secret: bytes, *parts: str | bytes) -> np.random.Generator:
    """A generator seeded by HMAC-SHA256(secret, parts...): same key, same stream, across processes."""
    mac = hmac.new(secret, b"\x1f".join(p if isinstance(p, bytes) else p.encode() for p in parts), hashlib.sha256)
    return np.random.default_rng(np.frombuffer(mac.digest(), dtype=np.uint32))


@dataclass
class OutputTransform:
    kind: Kind
    in_dim: int
    perm: np.ndarray | None = None
    pad: int = 0
    pad_secret: bytes = b""
    matrix: np.ndarray | None = None
    bias: np.ndarray | None = None
    out_dim: int = field(init=False)

    def __post_init__(self) -> None:
        if self.kind == "binary":
            assert self.matrix is not None, "a binary transform needs its matrix"
            self.out_dim = self.matrix.shape[1]
        else:
            self.out_dim = self.in_dim + self.pad

    def apply(self, y: np.ndarray, inputs_digest: list[str] | None = None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] != self.in_dim:
            raise ValueError(f"{self.kind}: expected (N, {self.in_dim}) representations, got {y.shape}")
        if self.kind == "affine":
            return (y @ self.matrix + self.bias).astype(np.float32)
        if self.kind == "binary":
            return np.where(y @ self.matrix >= 0, 1.0, -1.0).astype(np.float32)
        if self.pad:
            if inputs_digest is None or len(inputs_digest) != len(y):
                raise ValueError("pad_shuffle needs one digest per input (the padding is keyed by input)")
            scale = float(np.std(y)) or 1.0
            pads = np.stack([keyed_rng(self.pad_secret, d).normal(0, scale, self.pad) for d in inputs_digest]).astype(np.float32)
            y = np.concatenate([y, pads], axis=1)
        return y[:, self.perm]


def make_transform(kind: Kind, dim: int, rng: np.random.Generator, pad: int = 0, scale: tuple[float, float] = (0.5, 2.0),
                   pad_secret: bytes = b"") -> OutputTransform:
    if kind == "permute":
        return OutputTransform("permute", dim, perm=rng.permutation(dim))
    if kind == "pad_shuffle":
        if pad <= 0:
            raise ValueError("pad_shuffle needs pad > 0")
        return OutputTransform("pad_shuffle", dim, perm=rng.permutation(dim + pad), pad=pad,
                               pad_secret=pad_secret or rng.bytes(32))
    if kind == "affine":
        q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
        q = q * np.sign(np.diag(r))  # a uniformly random orthogonal matrix
        s = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), dim))
        return OutputTransform("affine", dim, matrix=(q * s).astype(np.float32), bias=rng.normal(0, 0.1, dim).astype(np.float32))
    if kind == "binary":
        return OutputTransform("binary", dim, matrix=rng.normal(size=(dim, dim + max(0, pad))).astype(np.float32))
    raise ValueError(f"unknown transform {kind!r}; choose permute, pad_shuffle, affine or binary")


def compose(transforms: list[OutputTransform], y: np.ndarray, inputs_digest: list[str] | None = None) -> np.ndarray:
    for t in transforms:
        y = t.apply(y, inputs_digest)
    return y
