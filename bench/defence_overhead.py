"""Each defence's overhead as a ratio of the undefended API's throughput, in one run, one server.

    python -m bench.defence_overhead            # real victim, 8 s per tier, 2 rounds (~3 min)
    python -m bench.defence_overhead --quick    # 3 s per tier, 1 round

One ``heist-server serve`` (real uvicorn, embedded store unless --redis) with one tier per defence
(and ``all``: noise + similar_query + b4b with affine transform + calibrated pow). Clients are
legitimate-shaped (3 shape classes of the ``test`` split, distinct images, 8 per request, 8 in
flight); an account that gets a 428 is replaced by a fresh one (a legitimate user stays inside the
profile; the gate's cost is still paid on every request). The load client sends pre-built requests
on keep-alive sockets (bench.loadgen.RawHttpConnection), so it takes little CPU from the server it
measures on a 2-core machine. Rounds interleave the tiers so load drift
from other processes hits all alike. Target: ``all`` >= 75 % of ``none``. Writes results/serving/defence_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import PROFILE, REPO, command, table, write_json
from bench.loadgen import RawHttpConnection
from shared.data.synthetic import DataSpec, load_split
from shared.images import encode_image
from testbed.profile import legit_streams
from testbed.services import server_env, start_server, wait_ready


def tiers(profile: str) -> dict:
    sim = {"name": "similar_query", "params": {}}
    b4b = {"name": "b4b", "params": {"center_from": profile}}
    return {
        "none": {},
        "gaussian_noise": {"defences": [{"name": "gaussian_noise", "params": {"mean": 0, "sigma": 0.1}}]},
        "rounding": {"defences": [{"name": "rounding", "params": {"decimals": 2}}]},
        "topk": {"defences": [{"name": "topk", "params": {"k": 32}}]},
        "similar_query": {"defences": [sim]},
        "b4b": {"defences": [{"name": "b4b", "params": {"center_from": profile, "transform": "affine"}}]},
        "pow": {"defences": [b4b, sim, {"name": "pow", "params": {"profile": profile}}]},
        "all": {"defences": [{"name": "gaussian_noise", "params": {"mean": 0, "sigma": 0.1}}, sim,
                             {"name": "b4b", "params": {"center_from": profile, "transform": "affine"}},
                             {"name": "pow", "params": {"profile": profile}}]},
    }


async def level(url: str, admin: str, tier: str, bodies: list[bytes], conc: int, seconds: float) -> dict:
    """``conc`` legitimate-shaped clients on ``tier`` for ``seconds`` (raw keep-alive HTTP, see bench.loadgen)."""
    done = errors = rotated = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        async def new_key() -> list[bytes]:
            r = await c.post("/v1/admin/accounts", json={"name": f"b-{secrets.token_hex(5)}", "tier": tier},
                             headers={"Authorization": f"Bearer {admin}"})
            headers = {"Authorization": f"Bearer {r.json()['api_key']}", "Content-Type": "application/json"}
            return [RawHttpConnection.build("POST", "/v1/embeddings", b, headers) for b in bodies]

        stop_at = time.perf_counter() + seconds

        async def worker(i: int):
            nonlocal done, errors, rotated
            conn, raws, j = RawHttpConnection.from_url(url), await new_key(), i
            while time.perf_counter() < stop_at:
                status, _ = await conn.request(raws[j % len(raws)])
                if status == 200:
                    done += 8
                elif status == 428:
                    raws, rotated = await new_key(), rotated + 1
                else:
                    errors += 1
                j += conc
            await conn.close()
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(i) for i in range(conc)])
        return {"images_per_s": done / (time.perf_counter() - t0), "errors": errors, "rotated": rotated}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--profile", default=str(PROFILE))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--redis", help="redis:// URL (default: embedded store)")
    p.add_argument("--tiers", nargs="+", help="only these tiers (none is always measured: the reference)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    test = load_split(DataSpec(), "test")
    idx = np.concatenate(legit_streams(test.labels["shape"], 8, 1200, 3, seed=5))
    enc = [encode_image(test.images[i], "PNG") for i in idx[:2048]]
    bodies = [json.dumps({"input": enc[k:k + 8], "encoding_format": "base64"}).encode() for k in range(0, len(enc) - 7, 8)]
    tmp = Path(tempfile.mkdtemp(prefix="heist-overhead-"))
    all_tiers = tiers(args.profile)
    if args.tiers:
        unknown = set(args.tiers) - set(all_tiers)
        if unknown:
            p.error(f"unknown tiers {sorted(unknown)}; choose from {sorted(all_tiers)}")
        all_tiers = {t: v for t, v in all_tiers.items() if t == "none" or t in args.tiers}
    conf = {"max_images_per_request": 64, "max_wait_ms": 2, "tiers": all_tiers}
    (tmp / "server.json").write_text(json.dumps(conf))
    admin = secrets.token_urlsafe(24)
    env = server_env(admin, secrets.token_urlsafe(24), redis_url=args.redis, prefix="overhead-" + secrets.token_hex(3),
                     HEIST_LOG_LEVEL="warning")
    server = start_server(args.checkpoint, env, tmp / "server.log", config_file=tmp / "server.json", args=["--device", "cpu"],
                          wait=False, discard_stdout=True)
    url = server.url
    results: dict[str, list[float]] = {t: [] for t in conf["tiers"]}
    extra: dict[str, dict] = {}
    try:
        wait_ready(url, server.proc, tmp / "server.log", timeout_s=120)
        asyncio.run(level(url, admin, "none", bodies, args.concurrency, 1.0))  # warm-up
        for r in range(args.rounds):
            order = list(conf["tiers"]) if r % 2 == 0 else list(reversed(conf["tiers"]))
            for tier in order:
                out = asyncio.run(level(url, admin, tier, bodies, args.concurrency, args.seconds))
                results[tier].append(out["images_per_s"])
                extra[tier] = out
                print(f"round {r} {tier:15s} {out['images_per_s']:7.1f} img/s", flush=True)
    finally:
        server.stop()
    base = float(np.mean(results["none"]))
    rows = [{"tier": t, "images_per_s": round(float(np.mean(v)), 1), "ratio": f"{np.mean(v) / base:.1%}",
             "errors": extra[t]["errors"], "accounts_rotated": extra[t]["rotated"]} for t, v in results.items()]
    print(f"victim {args.checkpoint}, {args.concurrency} requests in flight x 8 images, {args.seconds} s x {args.rounds} rounds, "
          f"store {'redis' if args.redis else 'embedded'}, {os.cpu_count()} CPUs")
    print(table(rows, ["tier", "images_per_s", "ratio", "errors", "accounts_rotated"]))
    path = write_json("serving", "defence_overhead", {"command": command("bench.defence_overhead", argv),
                                            "rows": rows, "raw": results, "tiers": conf["tiers"]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
