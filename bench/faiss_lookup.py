"""FAISS lookup time vs history size (10^3 .. 10^6 vectors), flat (exact) vs IVF (server/defences/index.py).

    python -m bench.faiss_lookup            # up to 10^6 (a few minutes on 2 cores)
    python -m bench.faiss_lookup --quick    # up to 10^5

History: random 64-d vectors (the victim's head dimension). Queries: a batch of 64 near-duplicates
(history rows + small noise) as one API request would search. Reports build time, search time per
batch and per query, and IVF recall@1 against the exact answer. Writes results/serving/faiss_lookup.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from bench.harness import command, table, write_json
from server.defences.index import VectorIndex


def timed(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 100_000]
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        x = rng.standard_normal((n, args.dim), dtype=np.float32)
        q = x[rng.choice(n, args.batch, replace=False)] + 0.05 * rng.standard_normal((args.batch, args.dim), dtype=np.float32)
        for kind in ("flat", "ivf"):
            if kind == "ivf" and n < 10_000:
                continue
            t0 = time.perf_counter()
            idx = VectorIndex(args.dim, "cosine", switch_at=(n if kind == "ivf" else 10 ** 9))
            idx.add(x)
            build = time.perf_counter() - t0
            assert idx.kind == kind
            t, (s, pos) = timed(lambda idx=idx, q=q: idx.search(q, 1))
            rows.append({"n": n, "index": kind, "build_s": round(build, 3), "batch_ms": round(1000 * t, 3),
                         "per_query_us": round(1e6 * t / args.batch, 1), "_pos": pos[:, 0]})
        exact = rows[-2]["_pos"] if rows[-1]["index"] == "ivf" else rows[-1]["_pos"]
        for r in rows:
            if r["n"] == n:
                r["recall@1"] = round(float((r["_pos"] == exact).mean()), 3)
        print(f"n={n} done", flush=True)
    for r in rows:
        r.pop("_pos")
    print(f"cosine, dim {args.dim}, batch of {args.batch} queries, faiss threads {args.threads}")
    print(table(rows, ["n", "index", "build_s", "batch_ms", "per_query_us", "recall@1"]))
    path = write_json("serving", "faiss_lookup", {"command": command("bench.faiss_lookup", argv), "dim": args.dim,
                                        "batch": args.batch, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
