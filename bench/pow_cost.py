"""Proof-of-work costs: verify cost per request, solve cost vs bits (hashlib solver), and the cost
ratio the calibrated difficulty puts on recorded workloads.

    python -m bench.pow_cost            # bits 8..22, 5 held-out legit users, 2 attackers (~3 min)
    python -m bench.pow_cost --quick    # bits 8..16, 2 legit users, 1 attacker

Cost ratio: the workloads are recorded with the real victim (testbed/profile.py), request by
request, with HELD-OUT legitimate users (another seed: other classes and images than the ones the
profile was learned from) and attackers (diverse ``attack`` split). For every request the calibrated
difficulty is computed from the account's state before it (exactly what the pow gate does), its
expected solve time is 2**bits / (hash rate measured here), and the base time is the measured
in-process time to embed one request. Ratio = (base + solve) / base over the whole workload.
Needs assets/profiles/legit_profile.json (python -m testbed.profile). Writes results/serving/pow_cost.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import PROFILE, REPO, command, table, write_json
from server.defences.pow import PowGate, calibrated_bits
from server.defences.profile import LegitProfile
from shared import pow as hashcash
from shared.checkpoint import load_checkpoint
from shared.data.synthetic import DataSpec, load_split
from testbed.profile import encode, record_profile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--profile", default=str(PROFILE))
    p.add_argument("--bits", type=int, nargs="+", default=[8, 12, 16, 18, 20, 22])
    p.add_argument("--legit-users", type=int, default=5)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--attacker-images", type=int, default=4000)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.bits, args.legit_users, args.attackers, args.attacker_images = [8, 12, 16], 2, 1, 2000
    torch.set_num_threads(1)
    secret, body = b"s" * 32, b'{"input": ["..."]}' * 20

    # 1. verify cost per request
    sols = []
    for _ in range(300):
        ch = hashcash.make_challenge(secret, "acct_x", body, 8)
        sols.append(f"{ch.token}:{hashcash.solve(ch.token, 8)[0]}")
    t0 = time.perf_counter()
    for s in sols:
        hashcash.verify_solution(secret, s, "acct_x", body)
    verify_us = 1e6 * (time.perf_counter() - t0) / len(sols)
    t0 = time.perf_counter()
    for _ in range(300):
        hashcash.make_challenge(secret, "acct_x", body, 20)
    issue_us = 1e6 * (time.perf_counter() - t0) / 300

    # 2. solve cost vs bits
    solve_rows, total_h, total_t = [], 0, 0.0
    for bits in args.bits:
        reps = max(2, min(20, 2 ** (22 - bits)))
        ts, hs = [], []
        for _ in range(reps):
            ch = hashcash.make_challenge(secret, "acct_x", body, bits)
            t0 = time.perf_counter()
            _, tries = hashcash.solve(ch.token, bits)
            ts.append(time.perf_counter() - t0)
            hs.append(tries)
        total_h, total_t = total_h + sum(hs), total_t + sum(ts)
        solve_rows.append({"bits": bits, "solves": reps, "mean_s": round(float(np.mean(ts)), 4),
                           "mean_hashes": int(np.mean(hs)), "expected_hashes": 2 ** bits})
        print(f"solved {bits} bits x{reps}", flush=True)
    rate = total_h / total_t

    # 3. cost ratio on recorded workloads (held-out legit users: seed 100)
    profile = LegitProfile.load(args.profile)
    gp = PowGate.Params(profile=Path(args.profile))
    _, traces = record_profile(args.checkpoint, users=args.legit_users, images=1200, classes=3, batch=32,
                               hyperplanes=profile.lsh.hyperplanes, hash_sets=profile.lsh.hash_sets, space=profile.similarity.space,
                               metric=profile.similarity.metric, tau=profile.similarity.tau, center=profile.lsh.center is not None,
                               attackers=args.attackers, attacker_images=args.attacker_images, seed=100)
    ck = load_checkpoint(args.checkpoint).eval()
    imgs = load_split(DataSpec(), "test").images[:32]
    encode(ck, imgs)
    t0 = time.perf_counter()
    for _ in range(5):
        encode(ck, imgs)
    base_s = (time.perf_counter() - t0) / 5
    rows = []
    for t in traces:
        before_imgs = [0] + t.images[:-1]
        before_cov = [0.0] + t.coverage[:-1]
        before_hits = [0] + t.similar_hits[:-1]
        bits = [calibrated_bits(profile, q, c, h, w_coverage=gp.w_coverage, w_similar=gp.w_similar, w_volume=gp.w_volume,
                                coverage_slack=gp.coverage_slack, slope=gp.slope, min_bits=gp.min_bits, max_bits=gp.max_bits)[0]
                for q, c, h in zip(before_imgs, before_cov, before_hits, strict=True)]
        solve_s = sum(2 ** b / rate for b in bits if b > 0)
        base = base_s * len(bits)
        rows.append({"account": t.user, "kind": t.kind, "images": t.images[-1], "requests": len(bits),
                     "charged": sum(b > 0 for b in bits), "max_bits": max(bits), "final_coverage": round(t.coverage[-1], 4),
                     "base_s": round(base, 2), "pow_s": round(solve_s, 2), "ratio": round((base + solve_s) / base, 2)})
    print(f"verify: {verify_us:.1f} us per request; issue challenge: {issue_us:.1f} us; hashlib SHA-256 solver: {rate / 1e6:.2f} MH/s")
    print(table(solve_rows, ["bits", "solves", "mean_s", "mean_hashes", "expected_hashes"]))
    print(f"\ncalibrated PoW on recorded workloads (profile {args.profile}; base = {1000 * base_s:.1f} ms per 32-image request)")
    print(table(rows, ["account", "kind", "images", "requests", "charged", "max_bits", "final_coverage", "base_s", "pow_s", "ratio"]))
    legit = [r["ratio"] for r in rows if r["kind"] == "legit"]
    att = [r["ratio"] for r in rows if r["kind"] == "attack"]
    print(f"legit max ratio {max(legit):.2f} (target <= 1.5); attacker min ratio {min(att):.1f} (target >= 10)")
    path = write_json("serving", "pow_cost", {"command": command("bench.pow_cost", argv), "verify_us": verify_us,
                                    "issue_us": issue_us, "hash_rate": rate, "solve": solve_rows, "base_request_s": base_s,
                                    "params": gp.model_dump(mode="json"), "workloads": rows,
                                    "legit_max_ratio": max(legit), "attacker_min_ratio": min(att)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
