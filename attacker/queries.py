"""Buying victim answers: query sets, the resumable cache, sybil accounts, query averaging.

Everything here talks to the victim only through :class:`shared.client.ApiClient` (HTTP, like a
customer) and buys through :mod:`shared.buy`: answers are written to the
:class:`shared.cache.QueryCache` durably on disk before the attack uses them; a rerun after a
crash asks the cache first and buys only what is missing.

Adaptive variants:

- **sybils** (several API keys): the queries are split into disjoint shards, one per account, plus
  ``anchors`` images that every account asks; a linear map (least squares with bias) from each
  account's output space into the first account's space is fitted on the anchors and applied to
  that account's shard. Defeats per-account output transformations that are (close to) affine.
- **averaging** (``repeats`` > 1): every image is asked ``repeats`` times (each answer cached under
  its own repeat index) and the answers are averaged: fresh random noise shrinks by sqrt(repeats),
  keyed noise (same answer for the same account and image) does not shrink at all.
- **no similar queries**: :func:`drop_similar` removes queries whose thumbnails are near-copies
  of earlier ones, so a similarity detector sees no augmented/repeated inputs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from shared.buy import AccountUse, buy_account, merged_stats
from shared.cache import QueryCache, image_ids

__all__ = ["AccountUse", "Acquired", "QuerySet", "acquire", "acquire_sync", "apply_map", "drop_similar", "fit_linear_map",
           "load_query_set", "merged_stats"]


@dataclass
class QuerySet:
    name: str
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray | None  # main-task labels (SupCon needs them), or None


def query_set_split(source: str, dataset: str = "heist-shapes", data_seed: int = 0, root: str | None = None):
    """The data spec and split a query set names: ``SPLIT`` of ``dataset``, or ``DATASET:SPLIT``
    (``root`` belongs to ``dataset``; the procedural benchmark needs none)."""
    from shared.data.synthetic import SHAPES, dataset_spec

    if ":" in source:
        dataset, source = source.split(":", 1)
        root = None if dataset == SHAPES else root
    return dataset_spec(dataset, seed=data_seed, root=root), source


def load_query_set(source: str, n: int, data_seed: int = 0, dataset: str = "heist-shapes", root: str | None = None) -> QuerySet:
    """The first ``n`` images of a query set.

    ``source``: a split of ``dataset`` open to the attacker (``attack``, ``shifted_train``, ``public``),
    ``DATASET:SPLIT`` for a split of another benchmark (an off-distribution thief), or
    ``real:NAME:ROOT`` for a folder dataset's training files.
    """
    if n < 1:
        raise ValueError(f"--queries must be >= 1, got {n}")
    if source.startswith("real:"):
        parts = source.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"a real query set is 'real:NAME:ROOT', got {source!r}")
        from shared.data.real import TASK, load_real

        ds = load_real(parts[1], parts[2], "train", size=32, limit=n)
        labels = ds.labels[TASK]
        labels = labels if (labels >= 0).all() else None
    else:
        from shared.data.synthetic import SHAPES, SplitSpec, cache_dir, generate_split, load_split

        spec, source = query_set_split(source, dataset, data_seed, root)
        dataset = spec.dataset
        if source not in spec.splits:
            raise ValueError(f"unknown query set {source!r} of {dataset}; use attack, shifted_train, DATASET:SPLIT "
                             "or real:NAME:ROOT")
        if source in ("train", "test", "shifted_test"):
            raise ValueError(f"query set {source!r} is off limits to the attacker (victim's private or evaluation data)")
        size = spec.splits[source].size
        if n > size:
            raise ValueError(f"query set {dataset}:{source} has {size} images, {n} asked")
        if spec.dataset != SHAPES or (cache_dir(spec) / f"{source}.npz").exists() or n > size // 2:
            ds = load_split(spec, source, progress=True)
        else:  # procedural splits are prefix-stable: render only the first n images (in memory)
            part = spec.model_copy(update={"splits": {source: SplitSpec(domain=spec.splits[source].domain, size=n)}})
            ds = generate_split(part, source, progress=False)
        labels = ds.labels[spec.main_task]
        source = source if spec.dataset == SHAPES else f"{spec.dataset}:{source}"
    if n > len(ds.images):
        raise ValueError(f"query set {source!r} has {len(ds.images)} images, {n} asked")
    return QuerySet(source, np.ascontiguousarray(ds.images[:n]), None if labels is None else labels[:n])


def drop_similar(images: np.ndarray, threshold: float = 0.98, size: int = 8) -> np.ndarray:
    """Indices of queries to keep: greedy, drops an image whose centred thumbnail has cosine
    similarity above ``threshold`` with one already kept (near-duplicates, augmented copies)."""
    n = len(images)
    th = images.reshape(n, size, images.shape[1] // size, size, images.shape[2] // size, 3).mean((2, 4)).reshape(n, -1)
    th = th - th.mean(1, keepdims=True)
    th = th / (np.linalg.norm(th, axis=1, keepdims=True) + 1e-8)
    kept: list[int] = []
    bank = np.zeros((0, th.shape[1]), np.float32)
    for i in range(n):
        if len(bank) and float((bank @ th[i]).max()) > threshold:
            continue
        kept.append(i)
        bank = np.vstack([bank, th[i : i + 1]])
    return np.asarray(kept, dtype=np.int64)


@dataclass
class Acquired:
    answers: np.ndarray  # (N, D) in the first account's space
    from_cache: int
    bought: int
    accounts: list[AccountUse]
    mapper_fit_error: list[float] = field(default_factory=list)  # relative residual on the anchors, per sybil

    def summary(self) -> dict:
        return {"from_cache": self.from_cache, "bought": self.bought,
                "accounts": [a.__dict__ for a in self.accounts], "mapper_fit_error": self.mapper_fit_error}


def fit_linear_map(src: np.ndarray, dst: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, float]:
    """W (D_src + 1, D_dst) with [src, 1] @ W ~ dst (ridge least squares); relative residual."""
    x = np.hstack([src, np.ones((len(src), 1), src.dtype)]).astype(np.float64)
    a = x.T @ x + ridge * np.eye(x.shape[1])
    w = np.linalg.solve(a, x.T @ dst.astype(np.float64))
    err = float(np.linalg.norm(x @ w - dst) / (np.linalg.norm(dst - dst.mean(0)) + 1e-12))
    return w.astype(np.float32), err


def apply_map(w: np.ndarray, src: np.ndarray) -> np.ndarray:
    return (np.hstack([src, np.ones((len(src), 1), src.dtype)]) @ w).astype(np.float32)


async def acquire(url: str, keys: list[str], images: np.ndarray, cache: QueryCache, *, output: str = "representation",
                  anchors: int = 0, repeats: int = 1, concurrency: int = 4, batch_size: int = 32, pow_workers: int = 1,
                  max_retries: int = 8, max_wait_s: float = 120, progress: bool = True) -> Acquired:
    """Victim answers for ``images``; several keys = sybil mode (shards + shared anchors + linear maps)."""
    if not keys:
        raise ValueError("at least one --api-key is needed")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    n, k = len(images), len(keys)
    if k > 1 and not 0 < anchors < n:
        raise ValueError(f"sybil mode with {k} keys needs 0 < anchors < {n} (shared anchor queries for the mapper)")
    if k == 1:
        anchors = 0
    ids = image_ids(images)
    # image indices per account: anchors (shared) + a contiguous shard of the rest
    rest = np.arange(anchors, n)
    shards = np.array_split(rest, k)
    plan = [np.concatenate([np.arange(anchors), s]) for s in shards]
    total = sum(len(p) for p in plan) * repeats
    uses: list[AccountUse] = []
    per_acct: list[np.ndarray] = []
    bar = tqdm(total=total, desc="queries", unit="img", disable=not progress)
    try:
        for key, idx in zip(keys, plan, strict=True):
            reps, use = await buy_account(url, key, images[idx], cache, ids=[ids[i] for i in idx], output=output,
                                          repeats=repeats, concurrency=concurrency, batch_size=batch_size,
                                          pow_workers=pow_workers, max_retries=max_retries, max_wait_s=max_wait_s, bar=bar)
            per_acct.append(np.mean(reps, axis=0) if repeats > 1 else reps[0])
            uses.append(use)
    finally:
        bar.close()
    out = np.empty((n, per_acct[0].shape[1]), np.float32)
    out[plan[0]] = per_acct[0]
    errors: list[float] = []
    for idx, ans in zip(plan[1:], per_acct[1:], strict=True):
        w, err = fit_linear_map(ans[:anchors], per_acct[0][:anchors])
        errors.append(err)
        out[idx[anchors:]] = apply_map(w, ans[anchors:])
    return Acquired(out, sum(u.from_cache for u in uses), sum(u.bought for u in uses), uses, errors)


def acquire_sync(*args, **kw) -> Acquired:
    return asyncio.run(acquire(*args, **kw))
