"""Similar-query detection table (like the stealing paper's): FPR / FNR at several tau, head space vs
representation space, cosine and l2, on the real victim.

    python -m bench.detection_table            # 1000 images (about 30 s on 2 cores)
    python -m bench.detection_table --quick    # 300 images

Positives: a SimCLR view (shared/augment.py ``simclr_view``) of an image the account already sent,
searched against the history of the original images (a hit = true detection; a miss = FNR).
Negatives: distinct images (another part of the ``attack`` split) searched against the same history
(a hit = false positive, FPR). Prints the table and writes results/defender/detection_table.json.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.harness import REPO, command, table, write_json
from server.defences.index import VectorIndex
from shared.augment import AugmentSpec, simclr_view
from shared.checkpoint import load_checkpoint
from shared.data.synthetic import DataSpec, load_split
from testbed.profile import encode


def nearest(history: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    idx = VectorIndex(history.shape[1], metric)
    idx.add(history)
    return idx.search(queries, 1)[0][:, 0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.images = 300
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint).eval()
    pool = load_split(DataSpec(), "attack").images
    n = args.images
    orig, other = pool[:n], pool[n:2 * n]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views = simclr_view(torch.from_numpy(orig).permute(0, 3, 1, 2).float() / 255, AugmentSpec(), g)
    views = (views.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    (y_o, z_o), (y_v, z_v), (y_d, z_d) = encode(ck, orig), encode(ck, views), encode(ck, other)
    rows, out = [], []
    for space, (ho, hv, hd) in {"head": (z_o, z_v, z_d), "representation": (y_o, y_v, y_d)}.items():
        for metric in ("cosine", "l2"):
            pos, neg = nearest(ho, hv, metric), nearest(ho, hd, metric)
            if metric == "cosine":
                taus = np.round(np.quantile(np.concatenate([pos, neg]), [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]), 3)
            else:
                taus = np.round(np.quantile(np.concatenate([pos, neg]), [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]), 3)
            for tau in taus:
                hit_p = pos >= tau if metric == "cosine" else pos <= tau
                hit_n = neg >= tau if metric == "cosine" else neg <= tau
                r = {"space": space, "metric": metric, "tau": float(tau), "FPR %": round(100 * hit_n.mean(), 1),
                     "FNR %": round(100 * (1 - hit_p.mean()), 1)}
                rows.append(r)
            # the best tau (min FPR + FNR) over all candidates: a single-number summary per setting
            cand = np.unique(np.concatenate([pos, neg]))
            errs = [((neg >= t).mean() + (pos < t).mean()) if metric == "cosine" else ((neg <= t).mean() + (pos > t).mean())
                    for t in cand[:: max(1, len(cand) // 400)]]
            best = cand[:: max(1, len(cand) // 400)][int(np.argmin(errs))]
            out.append({"space": space, "metric": metric, "best_tau": float(best), "best_error_sum_%": round(100 * min(errs), 1),
                        "pos_median": float(np.median(pos)), "neg_median": float(np.median(neg))})
    print(f"victim {args.checkpoint}: {n} originals, 1 SimCLR view each (positives) vs {n} distinct images (negatives)")
    print(table(rows, ["space", "metric", "tau", "FPR %", "FNR %"]))
    print()
    print(table(out, ["space", "metric", "best_tau", "best_error_sum_%", "pos_median", "neg_median"]))
    path = write_json("defender", "detection_table", {"command": command("bench.detection_table", argv), "images": n,
                                          "rows": rows, "best": out})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
