"""Soak: a served victim under steady load for minutes, on a real Redis; memory, descriptors, latency.

``python -m bench.soak`` starts ``heist-server serve`` (the shipped CPU victim) on a private Redis
persisted with AOF, creates accounts on four tiers (plain, keyed noise, proof of work with a fixed
small difficulty, and a tight rate limit that refuses most requests with 429) and keeps
``--concurrency`` keep-alive connections busy for ``--duration-s``. A 428 is answered by solving the
challenge and resending the same body (as any client does), so PoW tokens are spent under load.
Every ``--sample-s`` it reads the server's RSS and open descriptors from ``/proc`` and the window's
latency percentiles. Expected answers: 200, 428 (then solved) and 429 on the tight tier; anything
else, or a broken connection, is counted as unexpected.

Writes ``results/reliability/<name>.json`` and a plot ``<name>.png`` (RSS, descriptors and p99 over
time). The checks it reports: 0 unexpected answers, RSS growth between minute 2 and the end under
5%, p99 of the last windows within 1.5x of the windows after minute 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.harness import REPO, command, output, table, write_json
from bench.loadgen import RawHttpConnection
from shared import pow as hashcash
from testbed.services import new_key, server_env, start_redis, start_server

TIERS = {
    "plain": {"rate_limit": {"window_s": 60}},
    "noise": {"defences": [{"name": "gaussian_noise", "params": {"sigma": 0.05}}]},
    "pow": {"defences": [{"name": "pow", "params": {"fixed_bits": 8}}]},
    "tight": {"rate_limit": {"window_s": 10, "requests": 5}},
}


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    unexpected: int = 0
    pow_solved: int = 0


def _png(rng: np.random.Generator) -> str:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _worker(url: str, key: str, tier: str, bodies: list[bytes], stop: float, state: dict,
                  errors: list[str]) -> None:
    conn = RawHttpConnection.from_url(url)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    i = 0
    try:
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            headers = dict(auth)
            for _ in range(3):
                try:
                    status, payload = await conn.request(RawHttpConnection.build("POST", "/v1/embeddings", body, headers))
                except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
                    status, payload = -1, repr(e).encode()
                if status == 428:
                    challenge = json.loads(payload)["challenge"]
                    found = hashcash.solve(challenge["token"], int(challenge["difficulty"]))
                    assert found is not None
                    headers = {**auth, hashcash.HEADER: f"{challenge['token']}:{found[0]}"}
                    state["window"].pow_solved += 1
                    continue
                break
            w: Window = state["window"]
            w.latencies.append(time.perf_counter() - t0)
            w.statuses[status] = w.statuses.get(status, 0) + 1
            if not (status == 200 or (status == 429 and tier == "tight")):
                w.unexpected += 1
                if len(errors) < 20:
                    errors.append(f"{tier}: {status} {payload[:200]!r}")
            if status == 429:
                await asyncio.sleep(0.05)  # a refused client waits a little, as the Retry-After asks
    finally:
        await conn.close()


async def _run(url: str, pid: int, keys: dict[str, str], model: str, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"model": model, "input": [_png(rng) for _ in range(args.images)]}).encode()
              for _ in range(32)]
    state = {"window": Window()}
    errors: list[str] = []
    start = time.monotonic()
    stop = start + args.duration_s
    names = list(TIERS)
    tasks = [asyncio.create_task(_worker(url, keys[names[i % len(names)]], names[i % len(names)], bodies, stop,
                                         state, errors)) for i in range(args.concurrency)]
    samples = []
    while time.monotonic() < stop:
        await asyncio.sleep(min(args.sample_s, max(0.0, stop - time.monotonic())))
        w, state["window"] = state["window"], Window()
        lat = np.array(w.latencies) * 1000 if w.latencies else np.array([np.nan])
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mib": round(_rss_mib(pid), 1),
                        "fds": _fds(pid), "answered": len(w.latencies), "ok": w.statuses.get(200, 0),
                        "rate_limited": w.statuses.get(429, 0), "pow_solved": w.pow_solved,
                        "unexpected": w.unexpected, "p50_ms": round(float(np.percentile(lat, 50)), 1),
                        "p99_ms": round(float(np.percentile(lat, 99)), 1)})
        s = samples[-1]
        print(f"  t={s['t_s']:>6.0f} s  answered {s['answered']:>6}  rss {s['rss_mib']:.1f} MiB  fds {s['fds']}  "
              f"p99 {s['p99_ms']} ms  unexpected {s['unexpected']}", flush=True)
    await asyncio.gather(*tasks)
    return {"samples": samples, "errors": errors}


def _checks(samples: list[dict], warmup_s: float) -> dict:
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples
    first, last = after[0], samples[-1]
    tail = after[-max(1, len(after) // 4):]
    head = after[: max(1, len(after) // 4)]
    p99_ratio = float(np.median([s["p99_ms"] for s in tail]) / np.median([s["p99_ms"] for s in head]))
    growth = (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"]
    unexpected = sum(s["unexpected"] for s in samples)
    return {"unexpected": unexpected, "rss_from_mib": first["rss_mib"], "rss_to_mib": last["rss_mib"],
            "rss_growth": round(growth, 4), "p99_ratio_tail_to_head": round(p99_ratio, 3),
            "fds_from": first["fds"], "fds_to": last["fds"],
            "pass": {"no_unexpected": unexpected == 0, "rss_growth_under_5pct": growth < 0.05,
                     "p99_stable_within_1_5x": p99_ratio <= 1.5}}


def _plot(samples: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key, label in zip(axes, ("rss_mib", "fds", "p99_ms"), ("server RSS (MiB)", "open descriptors",
                                                                     "p99 latency (ms)"), strict=True):
        ax.plot(t, [s[key] for s in samples], marker=".")
        ax.axvline(warmup_s / 60, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("Soak: one server, real Redis (AOF), mixed tiers")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(REPO / "assets" / "victim-cpu"))
    p.add_argument("--duration-s", type=float, default=600)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--images", type=int, default=4, help="images per request")
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--warmup-s", type=float, default=120, help="RSS growth and p99 are judged after this")
    p.add_argument("--name", default="soak")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="heist-soak-") as d:
        redis = start_redis(Path(d) / "redis")
        admin = "soak-admin-" + secrets.token_hex(8)
        cfg = Path(d) / "server.json"
        cfg.write_text(json.dumps({"tiers": TIERS}))
        env = server_env(admin, secrets.token_hex(16), redis_url=redis.url)
        server = start_server(args.checkpoint, env, Path(d) / "server.log", config_file=cfg, discard_stdout=True,
                              ready_path="/readyz")
        try:
            keys = {tier: new_key(server.url, admin, tier, f"soak-{tier}") for tier in TIERS}
            model = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {keys['plain']}"},
                              timeout=30).json()["data"][0]["id"]
            print(f"soak: {args.concurrency} connections for {args.duration_s:.0f} s on {server.url} "
                  f"(tiers {', '.join(TIERS)})", flush=True)
            run = asyncio.run(_run(server.url, server.proc.pid, keys, model, args))
        finally:
            server.stop()
            redis.stop()
    checks = _checks(run["samples"], args.warmup_s)
    totals = {k: sum(s[k] for s in run["samples"]) for k in ("answered", "ok", "rate_limited", "pow_solved",
                                                              "unexpected")}
    print(table([{"check": k, "value": v} for k, v in {**totals, **{k: v for k, v in checks.items()
                                                                    if k != "pass"}}.items()], ["check", "value"]))
    print("pass:", checks["pass"])
    plot = output("reliability", f"{args.name}.png")
    _plot(run["samples"], args.warmup_s, plot)
    path = write_json("reliability", args.name, {
        "command": command("bench.soak", argv), "concurrency": args.concurrency, "duration_s": args.duration_s,
        "images_per_request": args.images, "tiers": TIERS, "totals": totals, "checks": checks,
        "samples": run["samples"], "errors": run["errors"], "plot": f"{args.name}.png"})
    print(f"wrote {path} and {plot}")
    return 0 if all(checks["pass"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
