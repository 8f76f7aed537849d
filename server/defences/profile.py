"""The legitimate-user profile that calibrates proof of work, LEARNED from a recorded workload.

A workload is a set of simulated users, each a stream of requests of images. Recording one runs the
real encoder (and head) over every request, in order, and tracks per account what the server's
defences would track: B4B coverage (same SimHash settings), similar-query hits (same space, metric,
tau) and volume. A legitimate user is a narrow downstream task (a few shape classes of the ``test``
split); an attacker is a diverse stream (the ``attack`` split, optionally with augmented views).

The profile is the upper envelope over the legitimate users: expected coverage C_hat(Q) after Q
images, similar-query rate, volume. It is saved as JSON and loaded by the ``pow`` defence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from server.defences.b4b import CoverageTracker, simhash_planes
from server.defences.index import VectorIndex, is_hit, pairwise_scores


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
            raise ValueError(f"legitimate profile {path} not found (record one: heist-server defences record-profile)")
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as e:
            raise ValueError(f"legitimate profile {path} is invalid: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path


@dataclass
class Trace:
    """Per-request trajectory of one simulated account."""

    user: str
    kind: str
    images: list[int]
    coverage: list[float]
    similar_hits: list[int]


def encode(checkpoint, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    import torch

    reps, projs = [], []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float().div_(255)
            y = checkpoint.encoder(x)
            reps.append(y.numpy())
            if checkpoint.head is not None:
                projs.append(checkpoint.head(y).numpy())
    return np.concatenate(reps), (np.concatenate(projs) if projs else None)


def legit_streams(shapes: np.ndarray, users: int, images: int, classes: int, seed: int = 0) -> list[np.ndarray]:
    """Index streams of legitimate users: each picks ``classes`` shape classes and sends ``images`` of them."""
    rng = np.random.default_rng(seed)
    out = []
    labels = np.unique(shapes)
    for _ in range(users):
        pick = rng.choice(labels, size=min(classes, len(labels)), replace=False)
        pool = np.flatnonzero(np.isin(shapes, pick))
        out.append(rng.choice(pool, size=min(images, len(pool)), replace=False))
    return out


def attacker_streams(n_pool: int, users: int, images: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n_pool, size=min(images, n_pool), replace=False) for _ in range(users)]


def trace_stream(kind: str, user: str, reps: np.ndarray, projs: np.ndarray | None, batch: int, lsh: LshSpec,
                 sim: SimilaritySpec, planes: np.ndarray) -> Trace:
    """Replay one stream request by request, tracking coverage and similar-query hits like the server."""
    z_all = projs if (sim.space == "projection" and projs is not None) else reps
    center = np.asarray(lsh.center, np.float32) if lsh.center is not None else None
    cov = CoverageTracker(planes, lsh.hyperplanes, lsh.hash_sets, center)
    index = VectorIndex(z_all.shape[1], sim.metric)
    t = Trace(user, kind, [], [], [])
    hits_total = 0
    for s in range(0, len(reps), batch):
        y, z = reps[s:s + batch], z_all[s:s + batch]
        scores, _ = index.search(z, 1)
        hit = is_hit(scores[:, 0], sim.metric, sim.tau)
        if len(z) > 1:
            hit |= np.tril(is_hit(pairwise_scores(z, sim.metric), sim.metric, sim.tau), -1).any(axis=1)
        hits_total += int(hit.sum())
        index.add(z)
        t.images.append(s + len(y))
        t.coverage.append(cov.add(y))
        t.similar_hits.append(hits_total)
    return t


def profile_from_traces(traces: list[Trace], lsh: LshSpec, sim: SimilaritySpec, source: dict, points: int = 64) -> LegitProfile:
    legit = [t for t in traces if t.kind == "legit"]
    if not legit:
        raise ValueError("no legitimate traces to learn a profile from")
    top = max(t.images[-1] for t in legit)
    grid = np.unique(np.linspace(0, top, points).round().astype(int)[1:])
    curves = np.stack([np.interp(grid, t.images, t.coverage, right=t.coverage[-1]) for t in legit])
    rate = max(t.similar_hits[-1] / t.images[-1] for t in legit)
    return LegitProfile(lsh=lsh, similarity=sim, images=grid.tolist(), coverage=np.round(curves.max(0), 6).tolist(),
                        similar_rate=round(float(rate), 6), volume=int(top), source=source)


def traces_to_json(traces: list[Trace]) -> list[dict]:
    return [t.__dict__ for t in traces]


def dump(path: str | Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2))


def record_profile(checkpoint: str | Path, *, users: int = 5, images: int = 1200, classes: int = 3, batch: int = 32,
                   hyperplanes: int = 12, hash_sets: int = 20, space: str = "projection", metric: str = "cosine", tau: float = 0.93,
                   center: bool = True, attackers: int = 1, attacker_images: int = 4000, seed: int = 0,
                   spec=None) -> tuple[LegitProfile, list[Trace]]:
    """Record legitimate (and, for comparison, attacker) workloads with the real encoder; learn the profile."""
    from tqdm.auto import tqdm

    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec, load_split

    ck = load_checkpoint(checkpoint).eval()
    spec = spec or DataSpec()
    test, attack = load_split(spec, "test"), load_split(spec, "attack")
    c = None
    if center:
        pub = load_split(spec, "public")
        c = encode(ck, pub.images)[0].mean(0)
    lsh = LshSpec(hyperplanes=hyperplanes, hash_sets=hash_sets, center=None if c is None else np.round(c, 6).tolist())
    sim = SimilaritySpec(space=space, metric=metric, tau=tau)
    planes = simhash_planes(b"profile-recorder", ck.config.representation_dim, hyperplanes, hash_sets)
    streams = [("legit", f"legit{i}", test, s) for i, s in enumerate(legit_streams(test.labels["shape"], users, images, classes, seed))]
    streams += [("attack", f"attack{i}", attack, s) for i, s in enumerate(attacker_streams(len(attack), attackers, attacker_images, seed + 1))]
    traces = []
    for kind, user, ds, idx in tqdm(streams, desc="recording workloads", unit="account"):
        reps, projs = encode(ck, ds.images[idx])
        traces.append(trace_stream(kind, user, reps, projs, batch, lsh, sim, planes))
    source = {"checkpoint": str(checkpoint), "data": spec.name, "legit": {"split": "test", "users": users, "images": images,
              "classes": classes, "batch": batch, "seed": seed}, "center": "public split mean" if center else None}
    return profile_from_traces(traces, lsh, sim, source), traces
