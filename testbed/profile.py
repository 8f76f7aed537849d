"""Recording the legitimate profile that calibrates proof of work, from simulated workloads.

A workload is a set of simulated users, each a stream of requests of images. Recording one runs the
real encoder (and head) over every request, in order, and tracks per account what the server's
defences would track: B4B coverage (same SimHash settings), similar-query hits (same space, metric,
tau) and volume. A legitimate user is a narrow downstream task (a few shape classes of the ``test``
split); an attacker is a diverse stream (the ``attack`` split, optionally with augmented views).

The profile (:class:`server.defences.profile.LegitProfile`) is the upper envelope over the
legitimate users; the ``pow`` defence loads it.

    python -m testbed.profile [--checkpoint runs/victim] [--out assets/profiles/legit_profile.json] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from server.defences.b4b import CoverageTracker, simhash_planes
from server.defences.index import VectorIndex, is_hit, pairwise_scores
from server.defences.profile import LegitProfile, LshSpec, SimilaritySpec

PROG = "python -m testbed.profile"


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
    """Index streams of legitimate users: each picks ``classes`` classes of the main task (``shapes``: its labels)
    and sends ``images`` of them (at most as many as those classes have)."""
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
    from shared.data.synthetic import load_split

    ck = load_checkpoint(checkpoint).eval()
    spec = spec or ck.config.data_spec()  # the victim's own benchmark
    test, attack = load_split(spec, "test"), load_split(spec, "attack")
    c = None
    if center:
        pub = load_split(spec, "public")
        c = encode(ck, pub.images)[0].mean(0)
    lsh = LshSpec(hyperplanes=hyperplanes, hash_sets=hash_sets, center=None if c is None else np.round(c, 6).tolist())
    sim = SimilaritySpec(space=space, metric=metric, tau=tau)
    planes = simhash_planes(b"profile-recorder", ck.config.representation_dim, hyperplanes, hash_sets)
    streams = [("legit", f"legit{i}", test, s) for i, s in enumerate(legit_streams(test.labels[spec.main_task], users, images, classes, seed))]
    streams += [("attack", f"attack{i}", attack, s) for i, s in enumerate(attacker_streams(len(attack), attackers, attacker_images, seed + 1))]
    traces = []
    for kind, user, ds, idx in tqdm(streams, desc="recording workloads", unit="account"):
        reps, projs = encode(ck, ds.images[idx])
        traces.append(trace_stream(kind, user, reps, projs, batch, lsh, sim, planes))
    source = {"checkpoint": str(checkpoint), "data": spec.name, "legit": {"split": "test", "users": users, "images": images,
              "classes": classes, "batch": batch, "seed": seed}, "center": "public split mean" if center else None}
    return profile_from_traces(traces, lsh, sim, source), traces


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    rp = argparse.ArgumentParser(prog=prog)
    rp.add_argument("--checkpoint", default="runs/victim")
    rp.add_argument("--out", default="assets/profiles/legit_profile.json")
    rp.add_argument("--traces", help="also write every simulated account's trajectory (JSON)")
    rp.add_argument("--users", type=int, default=5)
    rp.add_argument("--images", type=int, default=1200, help="images per legitimate user")
    rp.add_argument("--classes", type=int, default=3, help="main-task classes per legitimate user")
    rp.add_argument("--batch", type=int, default=32, help="images per request")
    rp.add_argument("--attackers", type=int, default=1, help="attacker traces recorded alongside (not used by the profile)")
    rp.add_argument("--attacker-images", type=int, default=4000)
    rp.add_argument("--hyperplanes", type=int, default=12)
    rp.add_argument("--hash-sets", type=int, default=20)
    rp.add_argument("--no-center", action="store_true", help="hash raw representations (default: subtract the public-split mean)")
    rp.add_argument("--space", choices=["projection", "representation"], default="projection")
    rp.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    rp.add_argument("--tau", type=float, default=0.93)
    rp.add_argument("--seed", type=int, default=0)
    return rp


def _record(args: argparse.Namespace) -> int:
    prof, traces = record_profile(args.checkpoint, users=args.users, images=args.images, classes=args.classes,
                                  batch=args.batch, hyperplanes=args.hyperplanes, hash_sets=args.hash_sets,
                                  space=args.space, metric=args.metric, tau=args.tau, center=not args.no_center,
                                  attackers=args.attackers, attacker_images=args.attacker_images, seed=args.seed)
    prof.save(args.out)
    if args.traces:
        dump(args.traces, {"profile": str(args.out), "traces": traces_to_json(traces)})
    print(f"legitimate profile from {args.users} users x {args.images} images ({args.classes} classes each) -> {args.out}")
    print(f"  coverage after {prof.images[-1]} images <= {prof.coverage[-1]:.4f}; similar-query rate <= {prof.similar_rate:.4f}; "
          f"volume <= {prof.volume}")
    for t in traces:
        print(f"  {t.kind:6s} {t.user:10s} images {t.images[-1]:6d} coverage {t.coverage[-1]:.4f} "
              f"similar hits {t.similar_hits[-1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Record a legitimate profile (and optionally every simulated trace) from the command line."""
    args = build_parser().parse_args(argv)
    try:
        return _record(args)
    except (ValidationError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
