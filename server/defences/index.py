"""A growable, trimmable FAISS index over history vectors: exact (flat) while small, IVF when large.

- ``cosine``: rows are L2-normalised, inner-product index, score = cosine similarity (hit: >= tau);
- ``l2``: squared-L2 index, score = Euclidean distance (hit: <= tau).

Below ``switch_at`` vectors the index is exact (``IndexFlat*``); at ``switch_at`` it is rebuilt as an
``IndexIVFFlat`` trained on the vectors it holds (nlist ~ sqrt(n), ``nprobe`` lists searched) and
retrained when it has grown 4x since (bench/faiss_lookup.py measures where flat gets slow). Trimming
to the newest ``maxlen`` vectors (the store's bounded stream) rebuilds from the kept rows.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np

Metric = Literal["cosine", "l2"]


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class VectorIndex:
    def __init__(self, dim: int, metric: Metric = "cosine", maxlen: int | None = None, switch_at: int = 5_000,
                 nprobe: int = 16) -> None:
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be cosine or l2, got {metric!r}")
        self.dim, self.metric, self.maxlen, self.switch_at, self.nprobe = dim, metric, maxlen, switch_at, nprobe
        self._buf = np.empty((0, dim), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.int64)
        self.n = 0
        self.kind = "flat"
        self._trained_at = 0
        self._index = self._flat()

    def _flat(self):
        return faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.dim)
        return normalise(x) if self.metric == "cosine" else x

    def _rebuild(self) -> None:
        data = self._buf[:self.n]
        if self.n >= self.switch_at:
            nlist = max(16, int(math.sqrt(self.n)))
            mt = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
            index = faiss.IndexIVFFlat(self._flat(), self.dim, nlist, mt)
            sample = data if self.n <= 40 * nlist else data[np.random.default_rng(0).choice(self.n, 40 * nlist, replace=False)]
            index.train(sample)
            index.nprobe = self.nprobe
            self.kind, self._trained_at = "ivf", self.n
        else:
            index, self.kind = self._flat(), "flat"
        if self.n:
            index.add(data)
        self._index = index

    def add(self, x: np.ndarray, labels: np.ndarray | int = 0) -> None:
        x = self._prep(x)
        m = len(x)
        if m == 0:
            return
        lab = np.broadcast_to(np.asarray(labels, dtype=np.int64), (m,))
        if self.n + m > len(self._buf):
            cap = max(1024, 2 * (self.n + m))
            buf = np.empty((cap, self.dim), dtype=np.float32)
            buf[:self.n] = self._buf[:self.n]
            lbl = np.empty(cap, dtype=np.int64)
            lbl[:self.n] = self._labels[:self.n]
            self._buf, self._labels = buf, lbl
        self._buf[self.n:self.n + m] = x
        self._labels[self.n:self.n + m] = lab
        self.n += m
        if self.maxlen is not None and self.n > self.maxlen + max(64, self.maxlen // 10):
            keep = self.maxlen  # drop the oldest (amortised: rebuild only past 10 % slack)
            self._buf[:keep] = self._buf[self.n - keep:self.n].copy()
            self._labels[:keep] = self._labels[self.n - keep:self.n].copy()
            self.n = keep
            self._rebuild()
        elif (self.kind == "flat" and self.n >= self.switch_at) or (self.kind == "ivf" and self.n >= 4 * self._trained_at):
            self._rebuild()
        else:
            self._index.add(x)

    def search(self, q: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each (len(q), k); position -1 where fewer than k vectors.

        Scores: cosine similarity (higher = closer) or Euclidean distance (lower = closer)."""
        q = self._prep(q)
        if self.n == 0:
            fill = -np.inf if self.metric == "cosine" else np.inf
            return np.full((len(q), k), fill, np.float32), np.full((len(q), k), -1, np.int64)
        d, i = self._index.search(q, k)
        if self.metric == "l2":
            d = np.sqrt(np.maximum(d, 0))
            d[i < 0] = np.inf
        else:
            d[i < 0] = -np.inf
        return d, i

    def labels(self, positions: np.ndarray) -> np.ndarray:
        out = np.full(positions.shape, -1, np.int64)
        ok = positions >= 0
        out[ok] = self._labels[positions[ok]]
        return out

    def __len__(self) -> int:
        return self.n


def is_hit(scores: np.ndarray, metric: Metric, tau: float) -> np.ndarray:
    return scores >= tau if metric == "cosine" else scores <= tau


def pairwise_scores(a: np.ndarray, metric: Metric) -> np.ndarray:
    """Within-batch score matrix (cosine similarity or Euclidean distance)."""
    if metric == "cosine":
        a = normalise(a)
        return a @ a.T
    sq = (a * a).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0))
