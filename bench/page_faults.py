"""Page faults in the serving forward pass, with glibc's default malloc and with freed memory kept.

    python -m bench.page_faults --checkpoint assets/victim-cpu      # about 1 min

The server's inference thread runs the frozen forward (``server.batcher.serving_module``) once per
batch. With glibc's defaults every pass maps its activations afresh and faults them in
(``shared.malloc``). Each configuration runs in its own child process, because ``mallopt`` cannot be
undone: ``default`` or ``retain`` (``shared.malloc.retain_freed_memory``, what ``heist-server serve``
does unless ``malloc_retain`` is off), the forward alone or next to a thread decoding PNG images in
a loop (the event loop's work). The four children run in turn, ``--rounds`` times, and the table
reports medians: images/s, minor faults and kernel time per forward pass (``RUSAGE_THREAD``).
Prints a table and writes results/serving/page_faults.json.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from bench.harness import REPO, command, table, write_json

CONFIGS = [("default", False), ("default", True), ("retain", False), ("retain", True)]


def _png(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def child(checkpoint: str, malloc: str, decoding: bool, batch: int, seconds: float, switch_ms: float) -> dict:
    """One configuration in this process: images/s, faults and kernel seconds per forward pass."""
    if malloc == "retain":
        from shared.malloc import retain_freed_memory

        if not retain_freed_memory():
            raise SystemExit("mallopt refused: nothing to compare")
    import torch
    from PIL import Image

    from server.batcher import held_input, serving_module
    from shared.checkpoint import load_checkpoint

    torch.set_num_threads(1)  # the server's setting on 2 cores: one for inference, one for the loop
    sys.setswitchinterval(switch_ms / 1000)
    ck = load_checkpoint(checkpoint).eval()
    module = serving_module(ck, projections=False)
    rng = np.random.default_rng(0)
    size = ck.config.input_size
    x, _anchor = held_input(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))  # as the server's batcher
    pngs = [_png(rng, size) for _ in range(64)]
    stop = threading.Event()

    def decode() -> None:
        k = 0
        while not stop.is_set():
            np.asarray(Image.open(io.BytesIO(pngs[k % len(pngs)])).convert("RGB"))
            k += 1

    with torch.inference_mode():
        for _ in range(5):
            module(x)
        busy = threading.Thread(target=decode, daemon=True) if decoding else None
        if busy is not None:
            busy.start()
            time.sleep(0.1)
        r0, n, t0 = resource.getrusage(resource.RUSAGE_THREAD), 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            module(x)
            n += 1
        elapsed, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_THREAD)
        stop.set()
        if busy is not None:
            busy.join()
    return {"images_per_s": n * batch / elapsed, "faults_per_forward": (r1.ru_minflt - r0.ru_minflt) / n,
            "kernel_share": (r1.ru_stime - r0.ru_stime) / elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "assets" / "victim-cpu"))
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (the server's max batch)")
    p.add_argument("--seconds", type=float, default=3.0, help="per child")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--switch-ms", type=float, default=0.2, help="GIL switch interval (the server's default)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        malloc, decoding = args.child.split(",")
        print(json.dumps(child(args.checkpoint, malloc, decoding == "1", args.batch, args.seconds, args.switch_ms)))
        return 0
    runs: dict[tuple[str, bool], list[dict]] = {c: [] for c in CONFIGS}
    for k in range(args.rounds):
        for malloc, decoding in CONFIGS:
            out = subprocess.run([sys.executable, "-m", "bench.page_faults", "--checkpoint", args.checkpoint,
                                  "--batch", str(args.batch), "--seconds", str(args.seconds),
                                  "--switch-ms", str(args.switch_ms), "--child", f"{malloc},{int(decoding)}"],
                                 cwd=REPO, capture_output=True, text=True, check=True)
            runs[(malloc, decoding)].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {k + 1}/{args.rounds} {malloc:8s} decoding={decoding}: {runs[(malloc, decoding)][-1]}", flush=True)
    rows: list[dict] = []
    for malloc, decoding in CONFIGS:
        got = runs[(malloc, decoding)]
        med = {k: statistics.median(g[k] for g in got) for k in got[0]}
        rows.append({"malloc": malloc, "next_to_decoding": decoding, "img_s": round(med["images_per_s"]),
                     "ms_per_img": round(1000 / med["images_per_s"], 3), "faults_per_forward": round(med["faults_per_forward"]),
                     "kernel_share": f"{med['kernel_share']:.1%}", "runs": got})
    base = {r["next_to_decoding"]: r["img_s"] for r in rows if r["malloc"] == "default"}
    for r in rows:
        r["vs_default"] = f"{r['img_s'] / base[r['next_to_decoding']]:.2f}x"
    print(f"checkpoint {args.checkpoint}, batch {args.batch}, 1 torch thread, switch interval {args.switch_ms} ms, "
          f"medians of {args.rounds} rounds")
    print(table(rows, ["malloc", "next_to_decoding", "img_s", "ms_per_img", "faults_per_forward", "kernel_share", "vs_default"]))
    path = write_json("serving", "page_faults", {"command": command("bench.page_faults", argv), "batch": args.batch,
                                                 "rounds": args.rounds, "switch_ms": args.switch_ms, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
