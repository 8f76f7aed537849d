"""How much a GIL-busy thread (the server's event loop) slows the inference thread's forward pass.

    python -m bench.gil_contention --checkpoint runs/victim     # about 1 min

The server runs inference in a worker thread while the event loop runs Python. The forward pass
releases the GIL, but the worker must take it back after every call into torch, and each retake
waits up to the interpreter's switch interval while the loop holds it. Two ways to run one batch:

- ``per-op``: uint8 -> float conversion as tensor ops from Python, then the frozen encoder and head
  (what the server did before: about seven GIL retakes per batch);
- ``fused``: ``server.batcher.serving_module``, the conversion, encoder and head in ONE frozen
  TorchScript call (one retake).

Each is timed alone and next to a thread spinning in Python, at switch intervals of 5 ms (Python's
default) and 0.2 ms (the server's default), in one run. Prints a table and writes
results/serving/gil_contention.json.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
import torch

from bench.harness import REPO, command, table, write_json
from server.batcher import frozen, serving_module
from shared.checkpoint import load_checkpoint


def per_op(checkpoint):
    size = checkpoint.config.input_size
    enc = frozen(checkpoint.encoder, torch.zeros(2, 3, size, size))
    head = frozen(checkpoint.head, torch.zeros(2, checkpoint.config.representation_dim))

    def run(x: torch.Tensor):
        y = enc(x.permute(0, 3, 1, 2).float().div_(255))
        return y.numpy(), head(y).numpy()
    return run


def fused(checkpoint):
    module = serving_module(checkpoint, projections=True)

    def run(x: torch.Tensor):
        y, z = module(x)
        return y.numpy(), z.numpy()
    return run


def spin(stop: threading.Event) -> None:
    """Python bytecode in a loop: holds the GIL whenever the interpreter lets it (like a busy event loop)."""
    k = 0
    while not stop.is_set():
        k += 1


def images_per_s(fn, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        fn(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += 1
        return n * len(x) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 0.2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the server's setting on 2 cores: one for inference, one for the loop
    ck = load_checkpoint(args.checkpoint).eval()
    if ck.head is None:
        p.error("the checkpoint has no projection head")
    size = ck.config.input_size
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8))
    ways = {"per-op": per_op(ck), "fused": fused(ck)}
    old = sys.getswitchinterval()
    rows = []
    try:
        for ms in args.switch_ms:
            sys.setswitchinterval(ms / 1000)
            for name, fn in ways.items():
                alone = images_per_s(fn, x, args.seconds)
                stop = threading.Event()

                busy = threading.Thread(target=spin, args=(stop,), daemon=True)
                busy.start()
                try:
                    contended = images_per_s(fn, x, args.seconds)
                finally:
                    stop.set()
                    busy.join()
                rows.append({"switch_ms": ms, "forward": name, "alone_img_s": round(alone), "next_to_busy_thread_img_s": round(contended),
                             "kept": f"{contended / alone:.1%}"})
                print(rows[-1], flush=True)
    finally:
        sys.setswitchinterval(old)
    print(f"checkpoint {args.checkpoint}, batch {args.batch}, 1 torch thread, encoder + head")
    print(table(rows, ["switch_ms", "forward", "alone_img_s", "next_to_busy_thread_img_s", "kept"]))
    path = write_json("serving", "gil_contention", {"command": command("bench.gil_contention", argv),
                                         "batch": args.batch, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
