"""Output watermark designs: how much of the mark a copy learns against what customers lose.

A design is ``REGIONS:STRENGTH[:TARGETS[:RATE[:FULL_SHARE]]]``: region normals ``isotropic`` or
``principal``, targets weighted by the principal directions' ``spread`` (the default) or ``even``, the
share of natural inputs each direction marks (default 0.05) and the share of those marked at full
strength (default 0.5; the rest on a linear ramp), :mod:`shared.output_watermark`. Each design is
measured with ``--keys`` keys (key 0 from the bench's secret, key ``i`` from the secret with ``/key-i``
appended): what customers lose varies from key to key as much as between designs, so a design's
cost is its mean over keys. Customers' cost is measured with ``--cost-keys`` keys (cheap), copies with the
first ``--keys`` of them (a copy trains for minutes). Per key:

1. **Customers.** ``--customers`` narrow customers of their own (the trade-off bench's task: 3 classes,
   1,200 test images; key ``i``'s customers are ``LegitTask`` seeds ``7 + i * customers``, ...) fit the
   customers' linear probe (``testbed.legit``: two thirds train, one third test) on the victim's clean
   answers and on the marked ones; the paired drop's mean and standard error. Customers differ from key
   to key, so the keys' mean drops are independent draws and their spread is an honest standard error;
   every design sees the same customers under key ``i``.
2. **A copy.** ``heist-attack steal``'s trainer (``attacker.steal.train_stolen``, ``--loss``,
   ``--epochs``, batch 128) on the marked answers to ``--queries`` attack images, verified by the
   ``output_watermark`` check's statistic on ``--align-n`` public images against ``--decoys`` decoy
   keys (z, p), and again for comparison with the plain projection along the targets (``shrink=1``, no
   weighting by the copy's error covariance) and with the map fitted outside the key's regions
   (``fit="outside"``). ``learnt`` is the copy's statistic over the marked
   answers' plain one: the share of the planted shift the copy carries.

Local on purpose: with no other defence on a tier, the API's answer is ``Marker.mark`` of the
victim's answer, so a thief buying over HTTP gets exactly these answers; ``bench.owm`` steals over
HTTP for the design of record. Each (design, key) result is kept in ``<work>/<design>-key<i>.json``
(a rerun resumes). Writes results/defender/<out>.json, .md and .png (default out: owm_design).

    python -m bench.owm_design                      # the default designs: costs over 10 keys, copies over 3 (~1 h on one core)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench.harness import command, output, table, write_json
from bench.owm import bench_secret
from shared.output_watermark import DIRECTIONS, FULL_SHARE, RATE, REGION_SPACES, TARGET_WEIGHTINGS, check_shape

REPO = Path(__file__).resolve().parent.parent
DESIGNS = ["isotropic:0.2:even", "isotropic:0.2:even:0.1:0.05", "isotropic:0.22:even:0.1:0.05"]


@dataclass(frozen=True)
class Design:
    regions: str
    strength: float
    targets: str
    rate: float
    full_share: float

    @property
    def name(self) -> str:
        return (f"{self.regions}-{self.strength:g}" + ("" if self.targets == "spread" else f"-{self.targets}")
                + ("" if self.rate == RATE else f"-r{self.rate:g}") + ("" if self.full_share == FULL_SHARE else f"-f{self.full_share:g}"))


def parse_design(text: str) -> Design:
    """``REGIONS:STRENGTH[:TARGETS[:RATE[:FULL_SHARE]]]`` as a :class:`Design`."""
    parts = text.split(":")
    targets = parts[2] if len(parts) >= 3 else TARGET_WEIGHTINGS[0]
    try:
        ok = 2 <= len(parts) <= 5 and parts[0] in REGION_SPACES and targets in TARGET_WEIGHTINGS
        strength = float(parts[1]) if ok else -1.0
        rate = float(parts[3]) if len(parts) >= 4 else RATE
        full = float(parts[4]) if len(parts) == 5 else FULL_SHARE
        check_shape(DIRECTIONS, rate, full)  # the calibration file's own bounds
    except ValueError:  # pydantic's ValidationError included
        ok = False
    if not ok or not 0 < strength <= 1:
        raise argparse.ArgumentTypeError(
            f"a design is REGIONS:STRENGTH[:TARGETS[:RATE[:FULL_SHARE]]] with REGIONS in {REGION_SPACES}, STRENGTH in (0, 1], "
            f"TARGETS in {TARGET_WEIGHTINGS}, RATE in (0, 0.25] and FULL_SHARE in (0, 1], got {text!r}")
    return Design(parts[0], strength, targets, rate, full)


def key_secret(secret: bytes, i: int) -> bytes:
    """Key ``i`` of a design: the bench's secret itself for key 0."""
    return secret if i == 0 else secret + f"/key-{i}".encode()


def summarise(rows: list[dict]) -> list[dict]:
    """Per design (in order), its keys' rows pooled: the customers' drop over every key and customer with
    the standard error over keys' means (over customers with one key), each key's drop, and each copy's z."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["design"], []).append(r)
    out = []
    for name, rs in groups.items():
        means = np.array([r["customer_drop_mean"] for r in rs])
        all_drops = np.concatenate([r["customer_drops"] for r in rs])
        se = (float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1
              else float(all_drops.std(ddof=1) / np.sqrt(len(all_drops))) if len(all_drops) > 1 else 0.0)
        copies = [r for r in rs if r["z"] is not None]
        learnt = [r["learnt"] for r in copies if r["learnt"] is not None]
        d = {"design": name, **{k: rs[0][k] for k in ("regions", "targets", "strength", "rate", "full_share")}}
        d.update({"keys": len(rs), "copies": len(copies), "customer_drop_mean": round(float(all_drops.mean()), 3),
                  "customer_drop_se": round(se, 3), "key_drops": [r["customer_drop_mean"] for r in rs],
                  "marked_share": round(float(np.mean([r["marked_share"] for r in rs])), 3),
                  "planted": round(float(np.mean([r["planted"] for r in rs])), 4),
                  "learnt": round(float(np.mean(learnt)), 3) if learnt else None,
                  "z": [r["z"] for r in copies], "z_plain": [r["z_plain"] for r in copies],
                  "z_outside": [r.get("z_outside") for r in copies],
                  "p_max": max(r["p"] for r in copies) if copies else None})
        out.append(d)
    return out


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
                    metavar="REGIONS:STRENGTH[:TARGETS[:RATE[:FULL_SHARE]]]")
    ap.add_argument("--keys", type=int, default=3, help="keys per design with a copy (the copy's z varies by key)")
    ap.add_argument("--cost-keys", type=int, default=10, help="keys per design for the customers' cost (at least --keys)")
    ap.add_argument("--directions", type=int, default=8)
    ap.add_argument("--customers", type=int, default=40)
    ap.add_argument("--queries", type=int, default=4000, help="the copy's bought answers (attack split)")
    ap.add_argument("--loss", default="mse")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--align-n", type=int, default=1000, help="public queries to the copy")
    ap.add_argument("--decoys", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="owm_design")
    args = ap.parse_args(argv)
    if not 1 <= args.keys <= args.cost_keys:
        ap.error("need 1 <= --keys <= --cost-keys")

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

    @functools.cache  # every design meets key k's customers
    def customers(k: int) -> list[np.ndarray]:
        """Key ``k``'s own customers (each key's drop an independent draw of customers)."""
        out = []
        for j in range(args.customers):
            t = LegitTask(seed=7 + k * args.customers + j)
            out.append(legit_streams(labels, users=1, images=t.images, classes=t.classes, seed=t.seed)[0])
        return out

    attack = load_split(spec, "attack", progress=False).images[:args.queries]
    clean_attack = extract_features(victim.encoder, attack)
    public = load_split(spec, "public", progress=False).images[:args.align_n]
    clean_public = extract_features(victim.encoder, public)
    setting = {"victim": str(args.victim), "directions": args.directions, "customers": args.customers,
               "queries": args.queries, "loss": args.loss, "epochs": args.epochs, "align_n": args.align_n,
               "decoys": args.decoys, "customers_per_key": "distinct"}
    base: dict[int, list[float]] = {}  # key -> its customers' clean accuracies (shared by the designs)
    rows = []
    units = [(d, k) for d in args.designs for k in range(args.cost_keys)]
    for design, k in tqdm(units, desc="designs x keys", unit="key"):
        path = args.work / f"{design.name}-key{k}.json"
        kept = json.loads(path.read_text()) if path.exists() else None
        if kept is not None and kept["setting"] == setting and (kept["z"] is not None or k >= args.keys):
            rows.append(kept)
            base[k] = kept["clean_accuracy"]
            continue
        key = key_secret(secret, k)
        cal = calibrate(clean_test[:2000], key, args.directions, design.rate, region_space=design.regions,
                        target_weighting=design.targets, full_share=design.full_share,
                        calibrated_on={"checkpoint": str(args.victim), "split": "test", "n": 2000})
        marker = Marker(cal, key, design.strength)
        marked_test, weights = marker.mark(clean_test)
        base[k], marked_acc = customer_drops(clean_test, marked_test, labels, customers(k), base.get(k))
        drops = 100 * (np.asarray(base[k]) - np.asarray(marked_acc))
        res = plain = outside = None
        if k < args.keys:
            ckpt, _ = train_stolen(attack, marker.mark(clean_attack)[0],
                                   StealConfig(loss=args.loss, epochs=args.epochs, batch_size=128), progress=False)
            copy = extract_features(ckpt.encoder, public)
            res = watermark_scores(copy, clean_public, key, cal, decoys=args.decoys)
            plain = watermark_scores(copy, clean_public, key, cal, decoys=args.decoys, shrink=1.0)  # no covariance weighting
            outside = watermark_scores(copy, clean_public, key, cal, decoys=args.decoys, fit="outside")
        planted = float(key_statistics(marker.mark(clean_public)[0], clean_public, cal, cal.keys(key, [TRUE_LABEL]),
                                       shrink=1.0)[0].mean())  # the plain shift along the targets
        row = {"design": design.name, "key": k, "regions": design.regions, "targets": design.targets,
               "strength": design.strength, "rate": design.rate, "full_share": design.full_share, "setting": setting,
               "customer_drop_mean": round(float(drops.mean()), 3),
               "customer_drop_se": round(float(drops.std(ddof=1) / np.sqrt(len(drops))), 3),
               "customer_drops": [round(float(x), 2) for x in drops], "clean_accuracy": base[k],
               "marked_share": round(float((weights.sum(1) > 0).mean()), 3),
               "z": round(res.z, 3) if res else None, "p": res.p_value if res else None,
               "z_plain": round(plain.z, 3) if plain else None, "z_outside": round(outside.z, 3) if outside else None,
               "planted": round(planted, 4),
               "learnt": round(res.statistic / planted, 3) if res and planted > 0 else None}
        path.write_text(json.dumps(row, indent=1))
        rows.append(row)
        tqdm.write(f"{design.name} key {k}: customers {row['customer_drop_mean']:+.2f} ± {row['customer_drop_se']:.2f} points"
                   + (f", copy z {row['z']:.2f} (learnt {row['learnt']})" if res else ""))
    designs = summarise(rows)
    tab = [{"design": d["design"], "keys": f"{d['keys']} ({d['copies']} copies)", "marked": f"{100 * d['marked_share']:.0f}%",
            "customers' drop (points)": f"{d['customer_drop_mean']:+.2f} ± {d['customer_drop_se']:.2f}",
            "keys' range": f"{min(d['key_drops']):+.2f} to {max(d['key_drops']):+.2f}",
            "planted": f"{d['planted']:.3f}", "learnt": f"{100 * d['learnt']:.0f}%" if d["learnt"] is not None else "-",
            "copy z per key": " / ".join(f"{x:.2f}" for x in d["z"]), "largest p": f"{d['p_max']:.1e}" if d["p_max"] is not None else "-",
            "z, plain projection": " / ".join(f"{x:.2f}" for x in d["z_plain"]),
            "z, map fitted outside": " / ".join(f"{x:.2f}" for x in d["z_outside"])} for d in designs]
    cols = ["design", "keys", "marked", "customers' drop (points)", "keys' range", "planted", "learnt", "copy z per key",
            "largest p", "z, plain projection", "z, map fitted outside"]
    text = table(tab, cols)
    print(text)
    cmd = command("bench.owm_design", argv)
    path = write_json("defender", args.out, {"command": cmd, "victim": str(args.victim), "designs": designs, "rows": rows})
    png = plot(designs, output("defender", args.out + ".png"))
    output("defender", f"{args.out}.md").write_text("\n".join(["# Output watermark designs", "", f"`{cmd}`", "", "```", text,
                                                             "```", ""]))
    print(f"wrote {path} and {png}")
    return 0


def plot(designs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for d in designs:
        colour = "tab:blue" if d["full_share"] >= 0.5 else "tab:green"
        shape = "o" if d["regions"] == "isotropic" else "s"
        z = np.asarray(d["z"])
        ax.errorbar(d["customer_drop_mean"], z.mean(), xerr=d["customer_drop_se"], yerr=[[z.mean() - z.min()], [z.max() - z.mean()]],
                    fmt=shape, color=colour, capsize=3)
        ax.annotate(d["design"], (d["customer_drop_mean"], z.mean()), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(float(stats.norm.isf(1e-6)), color="tab:red", ls=":", lw=1, label="p = 1e-6")
    ax.axvline(0.5, color="k", ls="--", lw=1, label="0.5 points")
    ax.set_xlabel("narrow customers' probe drop (points, mean over keys ± se)")
    ax.set_ylabel("copy's watermark z (mean, range over keys)")
    ax.set_title("output watermark designs (blue: half the marked inputs at full strength,\n"
                 "green: a long ramp; circles: isotropic regions, squares: principal)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
