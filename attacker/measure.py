"""Measuring a stolen copy against the victim as a legitimate customer sees it.

- The stolen copy: linear probes (shared.probe) on its own features, locally.
- The victim: a customer buys the representations of the probe images through the API (cached,
  so re-measuring is free) and trains the same linear probes on them.
Both use the same probe images (the ``train`` split's first ``probe_train_size`` images, the full
``test`` split; the shifted domain likewise), so the ratio stolen / victim is like for like.
Reports: JSON, markdown, and a plot of accuracy vs queries.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from attacker.queries import acquire
from shared.cache import QueryCache
from shared.data.synthetic import MAIN_TASK, DataSpec, load_split
from shared.probe import extract_features, linear_probe


def probe_sets(spec: DataSpec) -> list[tuple[str, str, str, str]]:
    """(probe name, task, train split, test split) for every task, and the main task on the shifted domain if any."""
    sets = [(task, task, "train", "test") for task in spec.tasks]
    if "shifted_train" in spec.splits and "shifted_test" in spec.splits:
        sets.append((f"{spec.main_task}_shifted", spec.main_task, "shifted_train", "shifted_test"))
    return sets


def _splits(spec: DataSpec, cap: int | None) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    out = {}
    for split in sorted({s for _, _, tr, te in probe_sets(spec) for s in (tr, te)}):
        ds = load_split(spec, split, progress=False)
        sl = slice(0, cap if (cap and split.endswith("train")) else len(ds.images))
        out[split] = (ds.images[sl], {t: y[sl] for t, y in ds.labels.items()})
    return out


def _probes(spec: DataSpec, feats: dict[str, np.ndarray], splits) -> dict[str, float]:
    res = {}
    for name, task, tr, te in probe_sets(spec):
        r = linear_probe(feats[tr], splits[tr][1][task], feats[te], splits[te][1][task])
        res[f"probe_{name}"] = round(r.top1, 4)
    return res


def probe_local(encoder: torch.nn.Module, spec: DataSpec, cap: int | None = 5000, progress: bool = True) -> dict[str, float]:
    splits = _splits(spec, cap)
    feats = {s: extract_features(encoder, imgs, progress=progress) for s, (imgs, _) in splits.items()}
    return _probes(spec, feats, splits)


def probe_api(url: str, key: str, spec: DataSpec, cache: QueryCache, cap: int | None = 5000, concurrency: int = 4,
              pow_workers: int = 1, progress: bool = True) -> tuple[dict[str, float], dict]:
    """The victim's quality as a customer measures it: probes on representations bought via the API."""
    splits = _splits(spec, cap)
    feats, cost = {}, {"from_cache": 0, "bought": 0}
    for s, (imgs, _) in splits.items():
        got = asyncio.run(acquire(url, [key], imgs, cache, concurrency=concurrency, pow_workers=pow_workers, progress=progress))
        feats[s] = got.answers
        cost["from_cache"] += got.from_cache
        cost["bought"] += got.bought
    return _probes(spec, feats, splits), cost


def ratios(stolen: dict[str, float], victim: dict[str, float]) -> dict[str, float]:
    return {k: round(stolen[k] / victim[k], 4) for k in stolen if k in victim and victim[k] > 0}


def write_report(out: Path, report: dict) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    j = out / "report.json"
    j.write_text(json.dumps(report, indent=2))
    lines = ["# Stolen encoder report", ""]
    s, v, r = report.get("stolen", {}), report.get("victim_api", {}), report.get("ratio", {})
    if s:
        lines += ["| probe | stolen | victim (API) | stolen / victim |", "|---|---|---|---|"]
        for k in s:
            lines.append(f"| {k} | {100 * s[k]:.1f}% | {100 * v[k]:.1f}% | {r.get(k, float('nan')):.3f} |" if k in v
                         else f"| {k} | {100 * s[k]:.1f}% | | |")
    cost = report.get("cost", {})
    if cost:
        lines += ["", "| cost | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in cost.items()]
    if "command" in report:
        lines += ["", f"Command: `{report['command']}`"]
    m = out / "report.md"
    m.write_text("\n".join(lines) + "\n")
    return j, m


def plot_accuracy(points: list[dict], path: Path, victim: float | None = None, metric: str = f"probe_{MAIN_TASK}") -> Path:
    """Accuracy vs queries, one line per loss; ``points`` have keys loss, queries, and ``metric``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for loss in sorted({p["loss"] for p in points}):
        pts = sorted((p["queries"], p[metric]) for p in points if p["loss"] == loss and metric in p)
        ax.plot([q for q, _ in pts], [100 * a for _, a in pts], marker="o", label=loss)
    if victim is not None:
        ax.axhline(100 * victim, color="k", ls="--", label="victim (API)")
        ax.axhline(90 * victim, color="gray", ls=":", label="90% of victim")
    ax.set_xlabel("queries (images bought)")
    ax.set_ylabel(f"linear probe top-1 ({metric.removeprefix('probe_')}) %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
