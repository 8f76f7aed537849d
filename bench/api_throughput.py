"""API throughput vs in-process batched forward of the same model, in the same run.

    python -m bench.api_throughput --checkpoint runs/victim        # full (about 1 min)
    python -m bench.api_throughput --quick                         # smoke check (random width-8 model)

Starts ``heist-server serve`` (real uvicorn; embedded store unless --redis URL) on a free loopback port,
creates an ``unlimited`` account through the admin endpoint, then for each concurrency level
(1, 8, 32) keeps that many requests in flight for --seconds and measures images/s and p50/p99
request latency. The in-process baseline runs the same checkpoint's encoder on the same images
(already decoded) in batches of concurrency x images-per-request (capped at the server's max batch).
Prints a table and writes results/serving/api_throughput.json (``--out NAME``: results/serving/NAME.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.harness import command, rel, write_json
from bench.loadgen import RawHttpConnection, process_cpu_seconds
from server.batcher import ServingForward, serving_module
from server.config import ServerConfig
from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec, load_checkpoint, save_checkpoint
from shared.images import encode_image
from shared.models import representation_dim
from testbed.services import server_env, start_server, wait_ready


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


async def _api_level(url: str, key: str, bodies: list[bytes], n_img: int, conc: int, seconds: float,
                     client: str = "raw", server_pid: int | None = None) -> dict:
    """Keep ``conc`` requests in flight for ``seconds``; images/s, latency, and the CPU both sides used."""
    lat: list[float] = []
    done = 0
    errors = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    raws = [RawHttpConnection.build("POST", "/v1/embeddings", b, headers) for b in bodies]
    conns = [RawHttpConnection.from_url(url) for _ in range(conc)]
    async with contextlib.AsyncExitStack() as stack:
        c = None
        if client == "httpx":
            limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
            c = await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=headers))

        async def send(i: int, j: int) -> int:
            if client == "raw":
                return (await conns[i].request(raws[j % len(raws)]))[0]
            return (await c.post("/v1/embeddings", content=bodies[j % len(bodies)])).status_code

        for i in range(conc):  # connect (and warm up) before the clock starts
            await send(i, i)
        cpu0, srv0 = time.process_time(), process_cpu_seconds(server_pid) if server_pid else float("nan")
        t_start = time.perf_counter()
        stop_at = t_start + seconds

        async def worker(i: int):
            nonlocal done, errors
            j = i
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status = await send(i, j)
                lat.append(time.perf_counter() - t0)
                if status == 200:
                    done += n_img
                else:
                    errors += 1
                j += conc
        await asyncio.gather(*[worker(i) for i in range(conc)])
        elapsed = max(1e-9, time.perf_counter() - t_start)
        cpu1, srv1 = time.process_time(), process_cpu_seconds(server_pid) if server_pid else float("nan")
    for conn in conns:
        await conn.close()
    return {"images_per_s": done / elapsed, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "requests": len(lat),
            "errors": errors, "client": client, "client_cpu": (cpu1 - cpu0) / elapsed, "server_cpu": (srv1 - srv0) / elapsed}


def _batch_stats(url: str) -> tuple[float, float, float]:
    """(forward passes, images, forward seconds) so far, from the server's Prometheus metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    vals = {}
    for line in text.splitlines():
        for name in ("heist_batch_images_count", "heist_batch_images_sum", "heist_batch_seconds_sum"):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
    return vals.get("heist_batch_images_count", 0.0), vals.get("heist_batch_images_sum", 0.0), vals.get("heist_batch_seconds_sum", 0.0)


def _inproc_level(encoder: torch.nn.Module, images: np.ndarray, batch: int, seconds: float) -> dict:
    lat: list[float] = []
    done = 0
    i = 0
    with torch.inference_mode():
        encoder(torch.from_numpy(images[:batch]))  # warm-up
        t_end = time.perf_counter() + seconds
        t_start = time.perf_counter()
        while time.perf_counter() < t_end:
            idx = np.arange(i, i + batch) % len(images)
            t0 = time.perf_counter()
            encoder(torch.from_numpy(images[idx]))[0].numpy()
            lat.append(time.perf_counter() - t0)
            done += batch
            i += batch
        elapsed = time.perf_counter() - t_start
    return {"images_per_s": done / elapsed, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "batch": batch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="victim checkpoint folder (default: a random-init ResNet-18)")
    p.add_argument("--width", type=int, default=32, help="width of the random-init model when no --checkpoint")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images-per-request", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (server and baseline alike)")
    p.add_argument("--no-jit", action="store_true", help="eager PyTorch in the server (HEIST_JIT=0) and in the baseline")
    p.add_argument("--switch-interval-ms", type=float, help="the server's GIL switch interval (default: the server's, 0.2 ms; "
                   "Python's own default is 5)")
    p.add_argument("--no-gc-freeze", action="store_true", help="serve without gc.freeze() after startup (HEIST_GC_FREEZE=0)")
    p.add_argument("--redis", help="redis:// URL (default: the embedded store)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: raw = pre-built HTTP/1.1 requests on keep-alive sockets (little client CPU); "
                        "httpx = the project's client library")
    p.add_argument("--quick", action="store_true", help="width-8 model, 1.5 s per level: checks the script works")
    p.add_argument("--out", default="api_throughput", help="name of the result: results/serving/NAME.json")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.width = 1.5, 8
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)

    tmp = Path(tempfile.mkdtemp(prefix="heist-bench-"))
    if args.checkpoint:
        ck_dir = Path(args.checkpoint)
    else:
        torch.manual_seed(0)
        cfg = EncoderConfig(arch="resnet18", width=args.width, representation_dim=representation_dim("resnet18", args.width),
                            head=HeadSpec(hidden_dim=64, out_dim=32))
        ck_dir = save_checkpoint(Checkpoint(cfg), tmp / f"random-resnet18-w{args.width}")
    ck = load_checkpoint(ck_dir).eval()
    # the baseline runs exactly what the server runs: uint8 NHWC -> representations in one frozen
    # TorchScript module (server.batcher.serving_module), or the same steps in eager mode with --no-jit
    encoder = ServingForward(ck.encoder, None).eval() if args.no_jit else serving_module(ck, projections=False)
    size = ck.config.input_size
    rng = np.random.default_rng(0)
    n_img = args.images_per_request
    images = rng.integers(0, 256, (256, size, size, 3), dtype=np.uint8)
    encoded = [encode_image(im, "PNG") for im in images]
    bodies = [json.dumps({"input": [encoded[(i * n_img + k) % len(encoded)] for k in range(n_img)],
                          "encoding_format": "base64"}).encode() for i in range(64)]

    admin = secrets.token_urlsafe(24)
    extra = {"HEIST_LOG_LEVEL": "warning", "HEIST_JIT": "0" if args.no_jit else "1",
             "HEIST_GC_FREEZE": "0" if args.no_gc_freeze else "1"}
    if args.switch_interval_ms is not None:
        extra["HEIST_SWITCH_INTERVAL_MS"] = str(args.switch_interval_ms)
    env = server_env(admin, secrets.token_urlsafe(24), redis_url=args.redis, prefix="bench-" + secrets.token_hex(3),
                     torch_threads=threads, **extra)
    (tmp / "server.json").write_text(json.dumps({"max_images_per_request": max(64, n_img)}))
    server = start_server(ck_dir, env, tmp / "server.log", config_file=tmp / "server.json", wait=False, discard_stdout=True,
                          args=["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", "cpu"])
    proc, url = server.proc, server.url
    rows = []
    try:
        wait_ready(url, proc, tmp / "server.log", timeout_s=60)
        key = httpx.post(url + "/v1/admin/accounts", json={"name": "bench", "tier": "unlimited"},
                         headers={"Authorization": f"Bearer {admin}"}).json()["api_key"]
        for conc in args.concurrency:
            b0 = _batch_stats(url)
            api = asyncio.run(_api_level(url, key, bodies, n_img, conc, args.seconds, args.client, proc.pid))
            b1 = _batch_stats(url)
            passes, imgs, fwd_s = (y - x for x, y in zip(b0, b1, strict=True))
            api["mean_batch"] = imgs / passes if passes else float("nan")
            api["forward_ms_per_image"] = 1000 * fwd_s / imgs if imgs else float("nan")
            batch = min(args.max_batch, conc * n_img)
            ref = _inproc_level(encoder, images, batch, args.seconds)
            ref["forward_ms_per_image"] = 1000 / ref["images_per_s"]
            rows.append({"concurrency": conc, "api": api, "in_process": ref, "ratio": api["images_per_s"] / ref["images_per_s"]})
    finally:
        server.stop()

    print(f"model {ck.config.arch} width {ck.config.width} ({ck_dir.name}), {n_img} images/request, PNG base64 in, "
          f"base64 float32 out, torch threads {threads}, {os.cpu_count()} CPUs, store {'redis' if args.redis else 'embedded'}, "
          f"{args.client} load client (CPU columns: cores busy in the server / in the load client)")
    print(f"{'conc':>4} | {'API img/s':>10} {'p50 ms':>8} {'p99 ms':>8} | {'in-proc img/s':>13} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} | {'API/in-proc':>11} | {'srv CPU':>7} {'cli CPU':>7} | {'batch':>5} {'fwd ms/img':>10} {'in-proc':>7}")
    for r in rows:
        a, b = r["api"], r["in_process"]
        print(f"{r['concurrency']:>4} | {a['images_per_s']:>10.1f} {a['p50_ms']:>8.1f} {a['p99_ms']:>8.1f} | "
              f"{b['images_per_s']:>13.1f} {b['batch']:>5d} {b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f} | {r['ratio']:>10.1%} | {a['server_cpu']:>7.2f} {a['client_cpu']:>7.2f} | "
              f"{a['mean_batch']:>5.1f} {a['forward_ms_per_image']:>10.3f} {b['forward_ms_per_image']:>7.3f}")
    out = write_json("serving", args.out, {"command": command("bench.api_throughput", argv),
                               "model": {"arch": ck.config.arch, "width": ck.config.width, "checkpoint": rel(ck_dir)},
                               "images_per_request": n_img, "seconds_per_level": args.seconds, "torch_threads": threads, "jit": not args.no_jit, "gc_freeze": not args.no_gc_freeze,
                               "cpus": os.cpu_count(), "client": args.client, "switch_interval_ms": args.switch_interval_ms or ServerConfig.model_fields["switch_interval_ms"].default, "store": "redis" if args.redis else "embedded",
                               "cuda": torch.cuda.is_available(), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
