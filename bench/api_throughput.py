"""API throughput vs in-process batched forward of the same model, on the same device, in the same run.

    python -m bench.api_throughput --checkpoint runs/victim        # full (about 1 min)
    python -m bench.api_throughput --quick                         # smoke check (random width-8 model)
    python -m bench.api_throughput --device cuda --width 64 --max-batch 256 --images-per-request 32 \
        --concurrency 32 64 --workers 4 --defences                 # a GPU host (scripts/gpu_bench.sh)

Starts ``heist-server serve`` (real uvicorn; embedded store unless --redis URL) on a free loopback port,
creates an ``unlimited`` account through the admin endpoint, then for each concurrency level
(1, 8, 32) keeps that many requests in flight for --seconds and measures images/s and p50/p99
request latency. The in-process baseline runs the same checkpoint's encoder on the same images
(already decoded) in batches of concurrency x images-per-request (capped at the server's max batch),
and at batch 256; on CUDA it is the server's own forward (server.batcher.Batcher.run_sync: CUDA
graphs, uint8 upload). ``--workers N`` serves N processes (N > 1 shares a store: --redis URL, or a
private redis-server started here); the server CPU column sums the whole process tree.
``--defences`` measures each level again on a tier with every defence on (bench.defence_overhead's
``all``: noise, similar_query, b4b with affine transform, calibrated pow; an account answered 428 is
replaced by a fresh one, as that bench does).
Prints a table and writes results/serving/api_throughput.json for the CPU,
results/serving/api_throughput_cuda.json for CUDA (``--out NAME``: results/serving/NAME.json).
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.harness import PROFILE, command, rel, write_json
from bench.loadgen import RawHttpConnection, tree_cpu_seconds
from server.batcher import Batcher, ServingForward, held_input, serving_module
from server.config import ServerConfig
from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec, load_checkpoint, save_checkpoint
from shared.images import encode_image
from shared.malloc import retain_freed_memory
from shared.models import representation_dim
from testbed.services import RedisProcess, server_env, start_redis, start_server, wait_ready


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


async def _api_level(url: str, key: str, bodies: list[bytes], n_img: int, conc: int, seconds: float,
                     client: str = "raw", server_pid: int | None = None,
                     new_key: Callable[[], Awaitable[str]] | None = None) -> dict:
    """Keep ``conc`` requests in flight for ``seconds``; images/s, latency, and the CPU both sides used
    (the server's: its whole process tree). With ``new_key``, a client answered 428 (proof of work
    asked) goes on with a fresh account, as a legitimate user inside the profile would not get one."""
    lat: list[float] = []
    done = 0
    errors = rotated = 0

    def build(k: str) -> tuple[dict[str, str], list[bytes]]:
        h = {"Authorization": f"Bearer {k}", "Content-Type": "application/json"}
        return h, [RawHttpConnection.build("POST", "/v1/embeddings", b, h) for b in bodies]
    keyed = [build(key)] * conc  # per client: its headers and pre-built requests
    conns = [RawHttpConnection.from_url(url) for _ in range(conc)]
    async with contextlib.AsyncExitStack() as stack:
        c = None
        if client == "httpx":
            limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
            c = await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits, timeout=60))

        async def send(i: int, j: int) -> int:
            if client == "raw":
                raws = keyed[i][1]
                return (await conns[i].request(raws[j % len(raws)]))[0]
            return (await c.post("/v1/embeddings", content=bodies[j % len(bodies)], headers=keyed[i][0])).status_code

        for i in range(conc):  # connect (and warm up) before the clock starts
            await send(i, i)
        cpu0, srv0 = time.process_time(), tree_cpu_seconds(server_pid) if server_pid else float("nan")
        t_start = time.perf_counter()
        stop_at = t_start + seconds

        async def worker(i: int):
            nonlocal done, errors, rotated
            j = i
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status = await send(i, j)
                lat.append(time.perf_counter() - t0)
                if status == 200:
                    done += n_img
                elif status == 428 and new_key is not None:
                    keyed[i], rotated = build(await new_key()), rotated + 1
                else:
                    errors += 1
                j += conc
        await asyncio.gather(*[worker(i) for i in range(conc)])
        elapsed = max(1e-9, time.perf_counter() - t_start)
        cpu1, srv1 = time.process_time(), tree_cpu_seconds(server_pid) if server_pid else float("nan")
    for conn in conns:
        await conn.close()
    out = {"images_per_s": done / elapsed, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "requests": len(lat),
           "errors": errors, "client": client, "client_cpu": (cpu1 - cpu0) / elapsed, "server_cpu": (srv1 - srv0) / elapsed}
    if new_key is not None:
        out["accounts_rotated"] = rotated
    return out


def _batch_stats(url: str) -> tuple[float, float, float]:
    """(forward passes, images, forward seconds) so far, from the server's Prometheus metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    vals = {}
    for line in text.splitlines():
        for name in ("heist_batch_images_count", "heist_batch_images_sum", "heist_batch_seconds_sum"):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
    return vals.get("heist_batch_images_count", 0.0), vals.get("heist_batch_images_sum", 0.0), vals.get("heist_batch_seconds_sum", 0.0)


def _inproc_level(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, seconds: float) -> dict:
    """``forward`` (uint8 NHWC numpy -> representations as numpy, synchronous) in batches of ``batch``."""
    lat: list[float] = []
    done = 0
    i = 0
    forward(images[:batch])  # warm-up (and, on CUDA, cuDNN's choice for this shape)
    t_end = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while time.perf_counter() < t_end:
        idx = np.arange(i, i + batch) % len(images)
        t0 = time.perf_counter()
        forward(images[idx])
        lat.append(time.perf_counter() - t0)
        done += batch
        i += batch
    elapsed = time.perf_counter() - t_start
    return {"images_per_s": done / elapsed, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "batch": batch,
            "forward_ms_per_image": 1000 * elapsed / max(1, done)}


def resolve_device(name: str) -> str:
    """cpu, cuda, or auto (cuda when torch sees one); cuda without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return name


def in_process_forward(ck: Checkpoint, device: str, max_batch: int, jit: bool, cuda_graphs: bool,
                       gpu_dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """What the server's inference worker runs for one batch, on the same device.

    CPU: uint8 NHWC -> representations in one frozen TorchScript call (``serving_module``), or the same
    steps eagerly without jit. CUDA: the server's batcher itself (``Batcher.run_sync``: graph replay per
    bucket, uint8 upload, pinned copies back), with a max batch of at least 256 for the batch-256 row.
    """
    if device == "cuda":
        batcher = Batcher(ck, torch.device("cuda"), max_batch=max(256, max_batch), cuda_graphs=cuda_graphs,
                          gpu_dtype=gpu_dtype)
        return lambda x: batcher.run_sync(x)[0]
    module = serving_module(ck, projections=False) if jit else ServingForward(ck.encoder, None).eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(held_input(x)[0] if jit else torch.from_numpy(x))[0].numpy()
    return forward


def defended_tier(profile: Path, center: np.ndarray, tmp: Path) -> tuple[dict, bool]:
    """bench.defence_overhead's ``all`` tier for this model. The recorded profile's LSH center is the
    default victim's mean representation; a model of another width gets a copy of the profile whose
    center is its own mean representation on the bench's images (second value: True)."""
    from bench.defence_overhead import tiers

    data = json.loads(profile.read_text())
    adapted = len(data["lsh"].get("center") or []) != len(center)
    if adapted:
        data["lsh"]["center"] = [float(v) for v in center]
        data.setdefault("source", {})["center"] = "bench.api_throughput: mean representation of the bench's images"
        profile = tmp / "profile.json"
        profile.write_text(json.dumps(data))
    return tiers(str(profile))["all"], adapted


def _rel_err(api: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(api - ref).max() / (np.abs(ref).max() + 1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="victim checkpoint folder (default: a random-init ResNet-18)")
    p.add_argument("--width", type=int, default=32, help="width of the random-init model when no --checkpoint")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="the server's and the in-process baseline's device (auto: cuda when present)")
    p.add_argument("--workers", type=int, default=1, help="server processes (heist-server serve --workers); "
                   "more than 1 needs a shared store: --redis, else a private redis-server is started")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images-per-request", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (server and baseline alike)")
    p.add_argument("--no-jit", action="store_true", help="eager PyTorch in the server (HEIST_JIT=0) and in the baseline")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: eager forward (HEIST_CUDA_GRAPHS=0), both sides")
    p.add_argument("--gpu-dtype", choices=["float32", "bfloat16"], default="bfloat16", help="CUDA: HEIST_GPU_DTYPE, both sides")
    p.add_argument("--defences", action="store_true", help="measure each level again with every defence on "
                   "(bench.defence_overhead's 'all' tier)")
    p.add_argument("--profile", default=str(PROFILE), help="legitimate profile of the defended tier (b4b center, pow)")
    p.add_argument("--traffic", choices=["random", "legit"], default="random",
                   help="request images: random = uniform noise; legit = legitimate-shaped streams of the dataset's test "
                        "split (bench.defence_overhead's; rendered on first use). Random images trip the defended tier's "
                        "proof of work within a few requests, so --defences wants legit")
    p.add_argument("--switch-interval-ms", type=float, help="the server's GIL switch interval (default: the server's, 0.2 ms; "
                   "Python's own default is 5)")
    p.add_argument("--no-gc-freeze", action="store_true", help="serve without gc.freeze() after startup (HEIST_GC_FREEZE=0)")
    p.add_argument("--no-malloc-retain", action="store_true", help="glibc's default malloc in the server (HEIST_MALLOC_RETAIN=0) "
                   "and in the baseline; by default both keep freed memory (shared.malloc)")
    p.add_argument("--redis", help="redis:// URL (default: the embedded store, or a private redis-server with --workers > 1)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: raw = pre-built HTTP/1.1 requests on keep-alive sockets (little client CPU); "
                        "httpx = the project's client library")
    p.add_argument("--quick", action="store_true", help="width-8 model, 1.5 s per level: checks the script works")
    p.add_argument("--out", help="name of the result: results/serving/NAME.json (default api_throughput on the CPU, "
                   "api_throughput_cuda on CUDA)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.width = 1.5, 8
    device = resolve_device(args.device)
    out_name = args.out or ("api_throughput" if device == "cpu" else f"api_throughput_{device}")
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    malloc_retain = not args.no_malloc_retain and retain_freed_memory()  # the baseline's process, as the server's

    tmp = Path(tempfile.mkdtemp(prefix="heist-bench-"))
    if args.checkpoint:
        ck_dir = Path(args.checkpoint)
    else:
        torch.manual_seed(0)
        cfg = EncoderConfig(arch="resnet18", width=args.width, representation_dim=representation_dim("resnet18", args.width),
                            head=HeadSpec(hidden_dim=64, out_dim=32))
        ck_dir = save_checkpoint(Checkpoint(cfg), tmp / f"random-resnet18-w{args.width}")
    ck = load_checkpoint(ck_dir, torch.device(device)).eval()
    # the baseline runs exactly what the server runs (see in_process_forward)
    forward = in_process_forward(ck, device, args.max_batch, not args.no_jit, not args.no_cuda_graphs, args.gpu_dtype)
    size = ck.config.input_size
    rng = np.random.default_rng(0)
    n_img = args.images_per_request
    if args.traffic == "legit":
        from shared.data.synthetic import DataSpec, load_split
        from testbed.profile import legit_streams

        test = load_split(DataSpec(), "test")
        idx = np.concatenate(legit_streams(test.labels["shape"], 8, 1200, 3, seed=5))
        images = np.ascontiguousarray(test.images[idx[:512 * max(1, n_img // 8)]])
    else:
        images = rng.integers(0, 256, (512, size, size, 3), dtype=np.uint8)
    encoded = [encode_image(im, "PNG") for im in images]
    bodies = [json.dumps({"input": [encoded[(i * n_img + k) % len(encoded)] for k in range(n_img)],
                          "encoding_format": "base64"}).encode() for i in range(max(64, len(encoded) // n_img))]

    admin = secrets.token_urlsafe(24)
    extra = {"HEIST_LOG_LEVEL": "warning", "HEIST_JIT": "0" if args.no_jit else "1",
             "HEIST_GC_FREEZE": "0" if args.no_gc_freeze else "1", "HEIST_MALLOC_RETAIN": "0" if args.no_malloc_retain else "1"}
    if device == "cuda":
        extra.update(HEIST_CUDA_GRAPHS="0" if args.no_cuda_graphs else "1", HEIST_GPU_DTYPE=args.gpu_dtype)
    if args.switch_interval_ms is not None:
        extra["HEIST_SWITCH_INTERVAL_MS"] = str(args.switch_interval_ms)
    redis: RedisProcess | None = None
    redis_url = args.redis
    if args.workers > 1 and redis_url is None:
        redis = start_redis(tmp / "redis")
        redis_url = redis.url
    conf: dict = {"max_images_per_request": max(64, n_img)}
    adapted = False
    if args.defences:
        all_tier, adapted = defended_tier(Path(args.profile), forward(images[:256]).mean(axis=0), tmp)
        conf["tiers"] = {"unlimited": {"description": "no limit, no defence", "outputs": ["representation", "projection"]},
                         "all": all_tier}
    (tmp / "server.json").write_text(json.dumps(conf))
    env = server_env(admin, secrets.token_urlsafe(24), redis_url=redis_url, prefix="bench-" + secrets.token_hex(3),
                     torch_threads=threads, **extra)
    server = start_server(ck_dir, env, tmp / "server.log", config_file=tmp / "server.json", wait=False, discard_stdout=True,
                          args=["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                "--device", device, "--workers", str(args.workers)])
    proc, url = server.proc, server.url
    rows: list[dict] = []
    ref256: dict = {}
    check: float = float("nan")
    try:
        wait_ready(url, proc, tmp / "server.log", timeout_s=240)

        def account(tier: str) -> str:
            r = httpx.post(url + "/v1/admin/accounts", json={"name": "bench-" + secrets.token_hex(4), "tier": tier},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=30)
            r.raise_for_status()
            return r.json()["api_key"]

        async def fresh_defended() -> str:
            return await asyncio.to_thread(account, "all")
        key = account("unlimited")
        # one correctness check: the API's answer vs the in-process forward for the same images
        r = httpx.post(url + "/v1/embeddings", timeout=60, headers={"Authorization": f"Bearer {key}"},
                       json={"input": encoded[:4], "encoding_format": "float"})
        r.raise_for_status()
        check = _rel_err(np.asarray([d["embedding"] for d in r.json()["data"]], np.float32), forward(images[:4]))
        ref256 = _inproc_level(forward, images, 256, min(args.seconds, 4.0))
        for conc in args.concurrency:
            b0 = _batch_stats(url)
            api = asyncio.run(_api_level(url, key, bodies, n_img, conc, args.seconds, args.client, proc.pid))
            b1 = _batch_stats(url)
            passes, imgs, fwd_s = (y - x for x, y in zip(b0, b1, strict=True))
            api["mean_batch"] = imgs / passes if passes else float("nan")
            api["forward_ms_per_image"] = 1000 * fwd_s / imgs if imgs else float("nan")
            batch = min(args.max_batch, conc * n_img)
            ref = _inproc_level(forward, images, batch, args.seconds)
            row = {"concurrency": conc, "api": api, "in_process": ref, "ratio": api["images_per_s"] / ref["images_per_s"],
                   "ratio_256": api["images_per_s"] / ref256["images_per_s"]}
            if args.defences:
                d = asyncio.run(_api_level(url, account("all"), bodies, n_img, conc, args.seconds, args.client,
                                           proc.pid, new_key=fresh_defended))
                row.update(defended=d, defended_vs_api=d["images_per_s"] / api["images_per_s"] if api["images_per_s"] else 0.0,
                           defended_ratio_256=d["images_per_s"] / ref256["images_per_s"])
            rows.append(row)
    finally:
        server.stop()
        if redis is not None:
            redis.stop()

    store = "redis" if redis_url else "embedded"
    print(f"model {ck.config.arch} width {ck.config.width} ({ck_dir.name}) on {device}, {n_img} images/request, PNG base64 in, "
          f"base64 float32 out, {args.workers} server process(es), torch threads {threads}, {os.cpu_count()} CPUs, store {store}, "
          f"{args.client} load client (CPU columns: cores busy in the server's processes / in the load client); "
          f"in-process batch 256: {ref256['images_per_s']:.1f} img/s; API vs in-process max relative error {check:.1e}")
    print(f"{'conc':>4} | {'API img/s':>10} {'p50 ms':>8} {'p99 ms':>8} | {'in-proc img/s':>13} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'API/in-proc':>11} {'/b256':>6} | {'srv CPU':>7} {'cli CPU':>7} | {'batch':>5} {'fwd ms/img':>10} {'in-proc':>7}"
          + (f" | {'defended':>9} {'p99 ms':>8} {'/API':>6} {'/b256':>6}" if args.defences else ""))
    for r in rows:
        a, b = r["api"], r["in_process"]
        line = (f"{r['concurrency']:>4} | {a['images_per_s']:>10.1f} {a['p50_ms']:>8.1f} {a['p99_ms']:>8.1f} | "
                f"{b['images_per_s']:>13.1f} {b['batch']:>5d} {b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f} | {r['ratio']:>10.1%} "
                f"{r['ratio_256']:>6.1%} | {a['server_cpu']:>7.2f} {a['client_cpu']:>7.2f} | "
                f"{a['mean_batch']:>5.1f} {a['forward_ms_per_image']:>10.3f} {b['forward_ms_per_image']:>7.3f}")
        if "defended" in r:
            d = r["defended"]
            line += f" | {d['images_per_s']:>9.1f} {d['p99_ms']:>8.1f} {r['defended_vs_api']:>6.1%} {r['defended_ratio_256']:>6.1%}"
        print(line)
    payload = {"command": command("bench.api_throughput", argv),
               "model": {"arch": ck.config.arch, "width": ck.config.width, "checkpoint": rel(ck_dir),
                         "trained": bool(args.checkpoint)},
               "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
               "workers": args.workers, "traffic": args.traffic, "images_per_request": n_img, "seconds_per_level": args.seconds,
               "max_batch": args.max_batch, "torch_threads": threads, "jit": not args.no_jit, "gc_freeze": not args.no_gc_freeze, "malloc_retain": malloc_retain,
               "cpus": os.cpu_count(), "client": args.client,
               "switch_interval_ms": args.switch_interval_ms or ServerConfig.model_fields["switch_interval_ms"].default,
               "store": store, "cuda": torch.cuda.is_available(), "api_vs_in_process_max_rel_err": check,
               "in_process_256": ref256, "rows": rows}
    if device == "cuda":
        payload.update(cuda_graphs=not args.no_cuda_graphs, gpu_dtype=args.gpu_dtype)
    if args.workers > 1:
        payload["batch_columns"] = "mean_batch and forward_ms_per_image come from the one worker that answered /metrics"
    if args.defences:
        payload["defended_tier"] = {"tier": "all (bench.defence_overhead)", "profile_center_adapted": adapted}
    out = write_json("serving", out_name, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
