"""The report a provider prints for an encoder: linear probes on both tasks and on the shifted
domain, the rotation watermark's accuracy, and the same probes for a random-init encoder of the
same architecture as the baseline."""

from __future__ import annotations

import torch

from shared.checkpoint import Checkpoint, EncoderConfig, WatermarkSpec
from shared.data.synthetic import DataSpec, load_split
from shared.probe import extract_features, linear_probe
from shared.watermark import predictor_accuracy, rotated_copies


def _cap(n: int, cap: int | None) -> slice:
    return slice(0, n if cap is None else min(n, cap))


def probe_report(encoder: torch.nn.Module, spec: DataSpec, device: torch.device, probe_cap: int | None = None,
                 progress: bool = False) -> dict[str, float]:
    """Top-1 of linear probes: every task on the in-distribution test split, the main task on the shifted domain."""
    out: dict[str, float] = {}
    train = load_split(spec, "train", progress=progress)
    test = load_split(spec, "test", progress=progress)
    sl = _cap(len(train), probe_cap)
    ftr = extract_features(encoder, train.images[sl], device=device, progress=progress)
    fte = extract_features(encoder, test.images, device=device, progress=progress)
    for task in spec.tasks:
        out[f"probe_{task}"] = linear_probe(ftr, train.labels[task][sl], fte, test.labels[task]).top1
    if "shifted_train" in spec.splits and "shifted_test" in spec.splits:
        strain = load_split(spec, "shifted_train", progress=progress)
        stest = load_split(spec, "shifted_test", progress=progress)
        sl2 = _cap(len(strain), probe_cap)
        fs_tr = extract_features(encoder, strain.images[sl2], device=device, progress=progress)
        fs_te = extract_features(encoder, stest.images, device=device, progress=progress)
        task = spec.main_task
        out[f"probe_{task}_shifted"] = linear_probe(fs_tr, strain.labels[task][sl2], fs_te, stest.labels[task]).top1
    return out


def watermark_report(ckpt: Checkpoint, spec: DataSpec, device: torch.device, n: int = 1000) -> float:
    """Accuracy of the checkpoint's own predictor on rotated, unseen test images."""
    if ckpt.watermark is None:
        raise ValueError("checkpoint has no watermark predictor")
    test = load_split(spec, "test", progress=False)
    rot, labels = rotated_copies(test.images[:n], ckpt.config.watermark or WatermarkSpec())
    return predictor_accuracy(ckpt.watermark, extract_features(ckpt.encoder, rot, device=device), labels)


def random_init_like(config: EncoderConfig, seed: int = 12345) -> Checkpoint:
    """An untrained encoder of the same architecture (the probes' baseline, the MI floor), seeded
    without touching the caller's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Checkpoint(config.model_copy(update={"kind": "random", "head": None, "watermark": None})).eval()


def full_report(ckpt: Checkpoint, spec: DataSpec, device: torch.device, probe_cap: int | None = None,
                with_baseline: bool = True, progress: bool = True) -> dict[str, float]:
    metrics = probe_report(ckpt.encoder, spec, device, probe_cap, progress)
    if ckpt.watermark is not None:
        metrics["watermark_acc"] = watermark_report(ckpt, spec, device)
    if with_baseline:
        rnd = random_init_like(ckpt.config).to(device)
        for k, v in probe_report(rnd.encoder, spec, device, probe_cap, progress).items():
            metrics[f"random_{k}"] = v
    return {k: round(float(v), 4) for k, v in metrics.items()}


def format_report(metrics: dict[str, float]) -> str:
    rows = [("metric", "encoder", "random init", "gain (points)")]
    for k, v in metrics.items():
        if k.startswith("random_"):
            continue
        r = metrics.get(f"random_{k}")
        rows.append((k, f"{100 * v:.1f}%", "" if r is None else f"{100 * r:.1f}%", "" if r is None else f"{100 * (v - r):+.1f}"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-+-".join("-" * x for x in w))
    return "\n".join(lines)
