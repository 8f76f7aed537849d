"""A legitimate customer: a narrow downstream task solved with the victim's embeddings over HTTP.

The customer owns a small labelled dataset of a few classes of the benchmark's main task (by
default 3 classes, up to 1,200 images of the ``test`` split, as the recorded legitimate profile's users), buys the embeddings of
all of it through the API (same client as everyone: PoW, Retry-After, cache), trains a linear probe
on two thirds and reports top-1 on the other third. Under a defence policy the same customer's
accuracy shows what the defence costs honest users.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import numpy as np

from shared.buy import buy, merged_stats
from shared.cache import QueryCache
from shared.data.synthetic import DataSpec, load_split
from shared.probe import linear_probe
from testbed.profile import legit_streams


@dataclass(frozen=True)
class LegitTask:
    classes: int = 3
    images: int = 1200
    seed: int = 7  # not one of the recorded profile's users (seeds 0..)
    split: str = "test"

    def __post_init__(self) -> None:
        if self.classes < 2 or self.images < 30:
            raise ValueError("a legitimate task needs >= 2 classes and >= 30 images")


def task_images(task: LegitTask, spec: DataSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    spec = spec or DataSpec()
    ds = load_split(spec, task.split, progress=False)
    labels = ds.labels[spec.main_task]
    idx = legit_streams(labels, users=1, images=task.images, classes=task.classes, seed=task.seed)[0]
    return ds.images[idx], labels[idx]


def legit_user(url: str, key: str, cache: QueryCache, task: LegitTask | None = None, *, spec: DataSpec | None = None,
               progress: bool = True, pow_workers: int = 1) -> dict:
    """Buy the task's embeddings, fit the probe; returns accuracy and what it cost."""
    task = task or LegitTask()
    images, labels = task_images(task, spec)
    t0 = time.perf_counter()
    got = asyncio.run(buy(url, key, images, cache, progress=progress, pow_workers=pow_workers))
    secs = time.perf_counter() - t0
    n_train = (2 * len(images)) // 3
    x = np.asarray(got.answers, np.float64)
    acc = linear_probe(x[:n_train], labels[:n_train], x[n_train:], labels[n_train:]).top1
    stats = merged_stats([got.use])
    return {"accuracy": round(float(acc), 4), "queries": len(images), "bought": got.use.bought, "from_cache": got.use.from_cache,
            "seconds": round(secs, 1), "pow_challenges": stats["pow_challenges"], "pow_hashes": stats["pow_hashes"],
            "pow_seconds": stats["pow_seconds"], "classes": sorted(int(c) for c in np.unique(labels)), "task": asdict(task)}
