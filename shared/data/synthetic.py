"""The project's datasets as one seeded, split, cached spec (``DataSpec``).

``DataSpec.dataset`` picks the benchmark: ``heist-shapes`` (the default), the project's procedural
benchmark generated here, or a real-image benchmark of ``shared.data.benchmarks`` (``mnist5k``,
which installs with the package, or a folder dataset such as ``cifar10`` read from ``root``).
Every dataset has the same split names, so every command takes any of them.

Procedural splits are generated independently from (seed, split name, chunk index), so every
split is deterministic, the first k images of a split do not depend on its total size, and no two
splits share a generator stream (disjointness is by construction and checked by the tests on
pixels). Real splits are disjoint blocks of a seeded class-stratified order of their pool.

Splits of the default spec (photo = in-distribution, sketch = shifted domain):

| split         | domain | use                                                            |
|---------------|--------|----------------------------------------------------------------|
| train         | photo  | the victim's private training set (defender's private A/B)     |
| test          | photo  | downstream test set (linear probes)                            |
| attack        | photo  | the attacker's in-distribution query pool                      |
| public        | photo  | the defender's public data (never trained on by anyone)        |
| shifted_train | sketch | shifted-domain pool: attacker OOD queries, shifted probe train |
| shifted_test  | sketch | shifted-domain probe test                                      |

``mnist5k`` has the same six splits (2,500 / 1,000 / 1,000 / 500 real MNIST digits; the shifted
domain is scikit-learn's 8 px digits, 1,200 / 597); folder datasets have no shifted splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from shared.data.base import ImageSet
from shared.data.benchmarks import BENCHMARKS, build_split
from shared.data.render import DOMAINS, render_chunk
from shared.data.shapes import PATTERN_NAMES, SHAPE_NAMES

CHUNK = 250
FORMAT_VERSION = 2  # 2: the blob field's frequency is drawn per image (version 1 drew it per chunk)
TASKS = {"shape": SHAPE_NAMES, "pattern": PATTERN_NAMES}
MAIN_TASK = "shape"
SHAPES = "heist-shapes"
DATASETS: tuple[str, ...] = (SHAPES, *BENCHMARKS)


class SplitSpec(BaseModel):
    """One split: the domain (procedural) or pool (real dataset) it is drawn from, and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str
    size: int = Field(gt=0)


DEFAULT_SPLITS: dict[str, SplitSpec] = {
    "train": SplitSpec(domain="photo", size=20000),
    "test": SplitSpec(domain="photo", size=4000),
    "attack": SplitSpec(domain="photo", size=10000),
    "public": SplitSpec(domain="photo", size=2000),
    "shifted_train": SplitSpec(domain="sketch", size=8000),
    "shifted_test": SplitSpec(domain="sketch", size=2000),
}


class DataSpec(BaseModel):
    """What to generate; its hash names the cache folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(default=SHAPES, description="the spec's name (the cache folder's prefix)")
    dataset: str = Field(default=SHAPES, description="the benchmark: " + ", ".join(DATASETS))
    seed: int = 0
    image_size: int = Field(default=32, ge=16, le=128)
    splits: dict[str, SplitSpec] = Field(default_factory=lambda: dict(DEFAULT_SPLITS))
    root: str | None = Field(default=None, description="folder of a real dataset's files (folder datasets only)")

    @model_validator(mode="after")
    def _known_dataset(self) -> DataSpec:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        domains = DOMAINS if self.dataset == SHAPES else BENCHMARKS[self.dataset].pools
        for split, sp in self.splits.items():
            if sp.domain not in domains:
                raise ValueError(f"split {split!r}: unknown domain {sp.domain!r} for {self.dataset}; choose one of {domains}")
        return self

    @property
    def tasks(self) -> list[str]:
        """The label tasks every split carries (the first is the main task)."""
        return list(TASKS) if self.dataset == SHAPES else [BENCHMARKS[self.dataset].task]

    @property
    def main_task(self) -> str:
        """The task that probes, customers and the supervised losses use."""
        return MAIN_TASK if self.dataset == SHAPES else BENCHMARKS[self.dataset].task

    def scaled(self, factor: float) -> DataSpec:
        """The same spec with every split's size multiplied by ``factor`` (prefixes of the full splits)."""
        splits = {k: SplitSpec(domain=s.domain, size=max(CHUNK, int(s.size * factor))) for k, s in self.splits.items()}
        return self.model_copy(update={"splits": splits})

    def digest(self) -> str:
        # the procedural specs' digests are the same as before the dataset option (their caches stay valid)
        fields = self.model_dump(exclude={k for k, default in (("root", None), ("dataset", SHAPES)) if getattr(self, k) == default})
        payload = json.dumps({"v": FORMAT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def dataset_spec(name: str = SHAPES, seed: int = 0, root: str | None = None, image_size: int = 32) -> DataSpec:
    """The default spec of dataset ``name`` (its default splits)."""
    if name == SHAPES:
        return DataSpec(seed=seed, image_size=image_size, root=root)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    splits = {k: SplitSpec(domain=pool, size=n) for k, (pool, n) in BENCHMARKS[name].splits.items()}
    if BENCHMARKS[name].needs_root and root is None:
        raise ValueError(f"dataset {name} reads its files from a folder: pass its root (--data-root DIR)")
    return DataSpec(name=name, dataset=name, seed=seed, image_size=image_size, splits=splits, root=root)


def default_data_dir() -> Path:
    return Path(os.environ.get("HEIST_DATA_DIR", "data")).resolve()


def _split_seed(split: str) -> int:
    return zlib.crc32(split.encode())  # stable across processes, unlike hash()


def generate_split(spec: DataSpec, split: str, progress: bool = True) -> ImageSet:
    """Render (procedural) or cut (real dataset) one split in memory (no cache)."""
    if split not in spec.splits:
        raise KeyError(f"unknown split {split!r}; {spec.name} has {sorted(spec.splits)}")
    if spec.dataset != SHAPES:
        blocks = {k: (v.domain, v.size) for k, v in spec.splits.items()}
        return build_split(spec.dataset, spec.seed, spec.image_size, spec.root, blocks, split)
    sp = spec.splits[split]
    n_chunks = -(-sp.size // CHUNK)
    images: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {t: [] for t in TASKS}
    for c in tqdm(range(n_chunks), desc=f"render {split}", unit="chunk", disable=not progress, leave=False):
        rng = np.random.default_rng([spec.seed, _split_seed(split), c])
        n = min(CHUNK, sp.size - c * CHUNK)
        imgs, labs = render_chunk(rng, CHUNK, spec.image_size, sp.domain)  # always a full chunk: prefix-stable
        images.append(imgs[:n])
        for t in TASKS:
            labels[t].append(labs[t][:n])
    return ImageSet(
        name=f"{spec.name}/{split}",
        images=np.concatenate(images),
        labels={t: np.concatenate(v) for t, v in labels.items()},
        classes={t: list(names) for t, names in TASKS.items()},
    )


def cache_dir(spec: DataSpec, root: Path | None = None) -> Path:
    return (root or default_data_dir()) / f"{spec.name}-{spec.digest()}"


def load_split(spec: DataSpec, split: str, root: Path | None = None, progress: bool = True) -> ImageSet:
    """Load a split from the on-disk cache, generating (and caching) it on first use."""
    folder = cache_dir(spec, root)
    path = folder / f"{split}.npz"
    if not path.exists():
        ds = generate_split(spec, split, progress=progress)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(spec.model_dump_json(indent=2))
        tmp = path.with_suffix(".tmp.npz")
        # numpy's stub cannot tell that no label key is its allow_pickle flag
        arrays = {"images": ds.images, **{f"label_{t}": y for t, y in ds.labels.items()},
                  **{f"classes_{t}": np.asarray(names, dtype=str) for t, names in ds.classes.items()}}
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)  # atomic: a killed run never leaves a half-written split
        return ds
    with np.load(path, allow_pickle=False) as z:
        labels = {k.removeprefix("label_"): z[k] for k in z.files if k.startswith("label_")}
        classes = {k.removeprefix("classes_"): [str(c) for c in z[k]] for k in z.files if k.startswith("classes_")}
        return ImageSet(
            name=f"{spec.name}/{split}",
            images=z["images"],
            labels=labels,
            classes=classes or {t: list(names) for t, names in TASKS.items()},  # caches written before classes were stored
        )


def make_all(spec: DataSpec, root: Path | None = None, progress: bool = True) -> dict[str, ImageSet]:
    return {s: load_split(spec, s, root, progress) for s in spec.splits}


def private_set_size(spec: DataSpec, pool: int | None = None) -> int:
    """Images in the victim's private set: the first ``pool`` of the train split (None: all of it)."""
    return spec.splits["train"].size if pool is None else min(pool, spec.splits["train"].size)


def private_split_indices(spec: DataSpec, size: int = 1000, seed: int = 0,
                          pool: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The defender's private parts A and B: disjoint index sets into the victim's private set.

    The private set is the first ``pool`` images of the train split (the victim's ``train_size``;
    None: the whole split).
    """
    n = private_set_size(spec, pool)
    if 2 * size > n:
        raise ValueError(f"private parts of {size} need {2 * size} training images, the private set has {n}")
    perm = np.random.default_rng([seed, 0xA11CE]).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size : 2 * size])
