"""The project's own benchmark: "heist shapes", seeded, split, cached on disk.

Splits are generated independently from (seed, split name, chunk index), so every split is
deterministic, the first k images of a split do not depend on its total size, and no two splits
share a generator stream (disjointness is by construction and checked by the tests on pixels).

Splits of the default spec (photo = in-distribution, sketch = shifted domain):

| split         | domain | use                                                            |
|---------------|--------|----------------------------------------------------------------|
| train         | photo  | the victim's private training set (defender's private A/B)     |
| test          | photo  | downstream test set (linear probes)                            |
| attack        | photo  | the attacker's in-distribution query pool                      |
| public        | photo  | the defender's public data (never trained on by anyone)        |
| shifted_train | sketch | shifted-domain pool: attacker OOD queries, shifted probe train |
| shifted_test  | sketch | shifted-domain probe test                                      |
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from shared.data.base import ImageSet
from shared.data.render import DOMAINS, render_chunk
from shared.data.shapes import PATTERN_NAMES, SHAPE_NAMES

CHUNK = 250
FORMAT_VERSION = 2  # 2: the blob field's frequency is drawn per image (version 1 drew it per chunk)
TASKS = {"shape": SHAPE_NAMES, "pattern": PATTERN_NAMES}
MAIN_TASK = "shape"


class SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str
    size: int = Field(gt=0)

    @field_validator("domain")
    @classmethod
    def _known_domain(cls, v: str) -> str:
        if v not in DOMAINS:
            raise ValueError(f"unknown domain {v!r}; choose one of {DOMAINS}")
        return v


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
    name: str = "heist-shapes"
    seed: int = 0
    image_size: int = Field(default=32, ge=16, le=128)
    splits: dict[str, SplitSpec] = Field(default_factory=lambda: dict(DEFAULT_SPLITS))

    def scaled(self, factor: float) -> DataSpec:
        """The same spec with every split's size multiplied by ``factor`` (prefixes of the full splits)."""
        splits = {k: SplitSpec(domain=s.domain, size=max(CHUNK, int(s.size * factor))) for k, s in self.splits.items()}
        return self.model_copy(update={"splits": splits})

    def digest(self) -> str:
        payload = json.dumps({"v": FORMAT_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def default_data_dir() -> Path:
    return Path(os.environ.get("HEIST_DATA_DIR", "data")).resolve()


def _split_seed(split: str) -> int:
    return zlib.crc32(split.encode())  # stable across processes, unlike hash()


def generate_split(spec: DataSpec, split: str, progress: bool = True) -> ImageSet:
    """Render one split in memory (no cache)."""
    if split not in spec.splits:
        raise KeyError(f"unknown split {split!r}; spec has {sorted(spec.splits)}")
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
        np.savez(tmp, images=ds.images, **{f"label_{t}": y for t, y in ds.labels.items()})  # type: ignore[arg-type]
        tmp.replace(path)  # atomic: a killed run never leaves a half-written split
        return ds
    with np.load(path, allow_pickle=False) as z:
        labels = {k.removeprefix("label_"): z[k] for k in z.files if k.startswith("label_")}
        return ImageSet(
            name=f"{spec.name}/{split}",
            images=z["images"],
            labels=labels,
            classes={t: list(names) for t, names in TASKS.items()},
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
