"""Output watermark designs: how much of the mark a copy learns against what customers lose.

For each design (``REGIONS:STRENGTH[:TARGETS]``: region normals ``isotropic`` or ``principal``,
targets weighted by the principal directions' ``spread`` (the default) or ``even``,
:mod:`shared.output_watermark`), with one key of the bench's secret:

1. **Customers.** ``--customers`` narrow customers (the trade-off bench's task: 3 classes, 1,200
   test images, ``LegitTask`` seeds 7, 8, ...) fit the customers' linear probe (``testbed.legit``:
   two thirds train, one third test) on the victim's clean answers and on the marked ones; the
   paired drop's mean and standard error.
2. **A copy.** ``heist-attack steal``'s trainer (``attacker.steal.train_stolen``, ``--loss``,
   ``--epochs``, batch 128) on the marked answers to ``--queries`` attack images, verified by the
   ``output_watermark`` check's statistic on ``--align-n`` public images against ``--decoys`` decoy
   keys (z, p), and again with the plain projection along the targets (``shrink=1``, no weighting by
   the copy's error covariance) for comparison. ``learnt`` is the copy's statistic over the marked
   answers' plain one: the share of the planted shift the copy carries.

Local on purpose: with no other defence on a tier, the API's answer is ``Marker.mark`` of the
victim's answer, so a thief buying over HTTP gets exactly these answers; ``bench.owm`` steals over
HTTP for the design of record. Each design's result is kept in ``<work>/<design>.json`` (a rerun
resumes). Writes results/defender/<out>.json, .md and .png (default out: owm_design).

    python -m bench.owm_design                      # the default designs (~30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench.harness import command, output, table, write_json
from bench.owm import bench_secret

REPO = Path(__file__).resolve().parent.parent
DESIGNS = ["isotropic:0.15", "isotropic:0.2", "isotropic:0.1:even", "isotropic:0.15:even", "isotropic:0.2:even",
           "principal:0.15:even"]


def parse_design(text: str) -> tuple[str, float, str]:
    """``REGIONS:STRENGTH[:TARGETS]`` as (regions, strength, targets)."""
    from shared.output_watermark import REGION_SPACES, TARGET_WEIGHTINGS

    parts = text.split(":")
    targets = parts[2] if len(parts) == 3 else TARGET_WEIGHTINGS[0]
    try:
        ok = len(parts) in (2, 3) and parts[0] in REGION_SPACES and targets in TARGET_WEIGHTINGS
        strength = float(parts[1]) if ok else -1.0
    except ValueError:
        strength = -1.0
    if not 0 < strength <= 1:
        raise argparse.ArgumentTypeError(f"a design is REGIONS:STRENGTH[:TARGETS] with REGIONS in {REGION_SPACES}, STRENGTH "
                                         f"in (0, 1] and TARGETS in {TARGET_WEIGHTINGS}, got {text!r}")
    return parts[0], strength, targets


def customer_drops(clean: np.ndarray, marked: np.ndarray, labels: np.ndarray, tasks: list[np.ndarray],
                   base: list[float] | None = None) -> tuple[list[float], list[float]]:
    """Per task, the clean and the marked probe's top-1 (the clean ones reused when given)."""
    from shared.probe import linear_probe

    def acc(x: np.ndarray, idx: np.ndarray) -> float:
        n = (2 * len(idx)) // 3
        xs, ys = x[idx].astype(np.float64), labels[idx]
        return float(linear_probe(xs[:n], ys[:n], xs[n:], ys[n:]).top1)

    base = base if base is not None else [acc(clean, idx) for idx in tasks]
    return base, [acc(marked, idx) for idx in tasks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victim", type=Path, default=REPO / "assets" / "victim-cpu")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "owm_design", help="secret and per-design results")
    ap.add_argument("--designs", nargs="+", type=parse_design, default=[parse_design(d) for d in DESIGNS],
                    metavar="REGIONS:STRENGTH[:TARGETS]")
    ap.add_argument("--directions", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--customers", type=int, default=40)
    ap.add_argument("--queries", type=int, default=4000, help="the copy's bought answers (attack split)")
    ap.add_argument("--loss", default="mse")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--align-n", type=int, default=1000, help="public queries to the copy")
    ap.add_argument("--decoys", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="owm_design")
    args = ap.parse_args(argv)

    import torch

    from attacker.steal import StealConfig, train_stolen
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import load_split
    from shared.output_watermark import TRUE_LABEL, Marker, calibrate, key_statistics, watermark_scores
    from shared.probe import extract_features
    from testbed.legit import LegitTask
    from testbed.profile import legit_streams

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    secret = bench_secret(args.work)
    victim = load_checkpoint(args.victim)
    spec = victim.config.data_spec()
    test = load_split(spec, "test", progress=False)
    clean_test = extract_features(victim.encoder, test.images)
    labels = test.labels[spec.main_task]
    tasks = []
    for i in range(args.customers):
        t = LegitTask(seed=7 + i)
        tasks.append(legit_streams(labels, users=1, images=t.images, classes=t.classes, seed=t.seed)[0])
    attack = load_split(spec, "attack", progress=False).images[:args.queries]
    clean_attack = extract_features(victim.encoder, attack)
    public = load_split(spec, "public", progress=False).images[:args.align_n]
    clean_public = extract_features(victim.encoder, public)
    setting = {"victim": str(args.victim), "directions": args.directions, "rate": args.rate, "customers": args.customers,
               "queries": args.queries, "loss": args.loss, "epochs": args.epochs, "align_n": args.align_n,
               "decoys": args.decoys}
    base: list[float] | None = None
    rows = []
    for regions, strength, targets in tqdm(args.designs, desc="designs", unit="design"):
        name = f"{regions}-{strength:g}" + ("" if targets == "spread" else f"-{targets}")
        path = args.work / f"{name}.json"
        kept = json.loads(path.read_text()) if path.exists() else None
        if kept is not None and kept["setting"] == setting:
            rows.append(kept)
            base = kept["clean_accuracy"]
            continue
        cal = calibrate(clean_test[:2000], secret, args.directions, args.rate, region_space=regions, target_weighting=targets,
                        calibrated_on={"checkpoint": str(args.victim), "split": "test", "n": 2000})
        marker = Marker(cal, secret, strength)
        marked_test, weights = marker.mark(clean_test)
        base, marked_acc = customer_drops(clean_test, marked_test, labels, tasks, base)
        drops = 100 * (np.asarray(base) - np.asarray(marked_acc))
        ckpt, _ = train_stolen(attack, marker.mark(clean_attack)[0],
                               StealConfig(loss=args.loss, epochs=args.epochs, batch_size=128), progress=False)
        copy = extract_features(ckpt.encoder, public)
        res = watermark_scores(copy, clean_public, secret, cal, decoys=args.decoys)
        plain = watermark_scores(copy, clean_public, secret, cal, decoys=args.decoys, shrink=1.0)  # no covariance weighting
        planted = float(key_statistics(marker.mark(clean_public)[0], clean_public, cal, cal.keys(secret, [TRUE_LABEL]),
                                       shrink=1.0)[0].mean())  # the plain shift along the targets
        row = {"design": name, "regions": regions, "targets": targets, "strength": strength, "setting": setting,
               "customer_drop_mean": round(float(drops.mean()), 3),
               "customer_drop_se": round(float(drops.std(ddof=1) / np.sqrt(len(drops))), 3),
               "customer_drops": [round(float(x), 2) for x in drops], "clean_accuracy": base,
               "marked_share": round(float((weights.sum(1) > 0).mean()), 3),
               "z": round(res.z, 3), "p": res.p_value, "z_plain": round(plain.z, 3), "planted": round(planted, 4),
               "learnt": round(res.statistic / planted, 3) if planted > 0 else None}
        path.write_text(json.dumps(row, indent=1))
        rows.append(row)
        tqdm.write(f"{name}: customers {row['customer_drop_mean']:+.2f} ± {row['customer_drop_se']:.2f} points, "
                   f"copy z {row['z']:.2f} (learnt {row['learnt']})")
    tab = [{"design": r["design"], "marked": f"{100 * r['marked_share']:.0f}%",
            "customers' drop (points)": f"{r['customer_drop_mean']:+.2f} ± {r['customer_drop_se']:.2f}",
            "planted": f"{r['planted']:.3f}", "learnt": f"{100 * r['learnt']:.0f}%" if r["learnt"] is not None else "-",
            "copy z": f"{r['z']:.2f}", "copy p": f"{r['p']:.1e}",
            "z, plain projection": f"{r['z_plain']:.2f}" if "z_plain" in r else "-"} for r in rows]
    cols = ["design", "marked", "customers' drop (points)", "planted", "learnt", "copy z", "copy p", "z, plain projection"]
    text = table(tab, cols)
    print(text)
    cmd = command("bench.owm_design", argv)
    path = write_json("defender", args.out, {"command": cmd, "victim": str(args.victim), "rows": rows})
    png = plot(rows, output("defender", args.out + ".png"))
    output("defender", f"{args.out}.md").write_text("\n".join(["# Output watermark designs", "", f"`{cmd}`", "", "```", text,
                                                             "```", ""]))
    print(f"wrote {path} and {png}")
    return 0


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        colour = "tab:blue" if r["regions"] == "isotropic" else "tab:orange"
        shape = "o" if r.get("targets", "spread") == "spread" else "s"
        ax.errorbar(r["customer_drop_mean"], r["z"], xerr=r["customer_drop_se"], fmt=shape, color=colour, capsize=3)
        ax.annotate(r["design"], (r["customer_drop_mean"], r["z"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(float(stats.norm.isf(1e-6)), color="tab:red", ls=":", lw=1, label="p = 1e-6")
    ax.axvline(0.5, color="k", ls="--", lw=1, label="0.5 points")
    ax.set_xlabel("narrow customers' probe drop (points, mean ± se)")
    ax.set_ylabel("copy's watermark z")
    ax.set_title("output watermark designs (blue: isotropic regions, orange: principal;\n"
                 "circles: targets by spread, squares: even)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
