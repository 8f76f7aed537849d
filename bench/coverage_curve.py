"""B4B coverage curve: an attacker-shaped stream (diverse ``attack`` images) vs legitimate narrow streams
(3 shape classes of the ``test`` split each), SimHash 12 hyperplanes x 20 sets, online per request.

    python -m bench.coverage_curve            # attacker 10,000 images, 3 legit users (~2 min)
    python -m bench.coverage_curve --quick    # attacker 2,000 images, 2 legit users

Hashing raw (post-ReLU, all non-negative) representations vs centred ones (public-split mean
subtracted, what the recorded profile uses). Plots results/attack/coverage_curve.png, writes
results/attack/coverage_curve.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bench.harness import REPO, command, output, table, write_json
from server.defences.b4b import CoverageTracker, sigma_of_coverage, simhash_planes
from shared.checkpoint import load_checkpoint
from shared.data.synthetic import DataSpec, load_split
from testbed.profile import attacker_streams, encode, legit_streams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--attacker-images", type=int, default=10_000)
    p.add_argument("--legit-users", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.attacker_images, args.legit_users = 2000, 2
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint).eval()
    spec = DataSpec()
    test, attack, pub = load_split(spec, "test"), load_split(spec, "attack"), load_split(spec, "public")
    center = encode(ck, pub.images)[0].mean(0)
    streams = [("attacker", encode(ck, attack.images[attacker_streams(len(attack), 1, args.attacker_images, 1)[0]])[0])]
    for i, idx in enumerate(legit_streams(test.labels["shape"], args.legit_users, 1200, 3, seed=0)):
        streams.append((f"legit{i}", encode(ck, test.images[idx])[0]))
    planes = simhash_planes(b"coverage-bench", ck.config.representation_dim, 12, 20)
    curves, rows = {}, []
    for mode, c in (("raw", None), ("centred", center)):
        for name, y in streams:
            tr = CoverageTracker(planes, 12, 20, c)
            xs, cs = [], []
            for s in range(0, len(y), args.batch):
                cs.append(tr.add(y[s:s + args.batch]))
                xs.append(min(len(y), s + args.batch))
            curves[f"{mode}/{name}"] = {"images": xs, "coverage": cs}
            at = {q: float(np.interp(q, xs, cs)) if q <= xs[-1] else None for q in (500, 1000, 2000, 10000)}
            rows.append({"hash": mode, "stream": name, "images": xs[-1], **{f"c@{q}": (round(v, 4) if v is not None else "-")
                                                                              for q, v in at.items()},
                         "final": round(cs[-1], 4), "sigma(final)": f"{float(sigma_of_coverage(cs[-1])):.2e}"})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, mode in zip(axes, ("raw", "centred"), strict=True):
        for key, cur in curves.items():
            if key.startswith(mode + "/"):
                name = key.split("/")[1]
                ax.plot(cur["images"], np.asarray(cur["coverage"]) * 100, color="C3" if name == "attacker" else "C0",
                        label=name if name in ("attacker", "legit0") else None, alpha=1 if name == "attacker" else 0.7)
        ax.set_title(f"{mode} representations")
        ax.set_xlabel("images sent")
        ax.set_ylabel("coverage (% of buckets, mean of 20 sets)")
        ax.legend(["attacker (diverse attack split)", "legit (3 shape classes of test)"])
        ax.grid(alpha=0.3)
    fig.suptitle("B4B SimHash coverage (12 hyperplanes x 20 sets), victim " + Path(args.checkpoint).name)
    fig.tight_layout()
    png = output("attack", "coverage_curve.png")
    fig.savefig(png, dpi=110)
    print(table(rows, ["hash", "stream", "images", "c@500", "c@1000", "c@2000", "c@10000", "final", "sigma(final)"]))
    path = write_json("attack", "coverage_curve", {"command": command("bench.coverage_curve", argv), "rows": rows,
                                          "curves": curves})
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
