"""Training throughput: the full training step vs the raw model step on the same batch.

full: gather B uint8 images from the split, convert, make two SimCLR views and the watermark
      rotations (batched tensor augmentation), forward, loss, backward, optimiser step;
raw:  the same forward/loss/backward/step on a batch tensor that is already made.
Both are timed alternately in one run (A, B, A, B, ...) and compared as a ratio, so machine
noise hits both alike. The data-pipeline and augmentation overhead is 1 - full/raw (target <= 25%).

    uv run python -m bench.train_throughput [--preset cpu] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench._common import table, write_json
from shared.augment import to_float
from shared.data.synthetic import load_split
from shared.device import resolve_device
from shared.train import get_preset
from shared.train.simclr import batch_loss, build_checkpoint, make_batch, watermark_batch_size


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=6, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating blocks of each kind")
    args = ap.parse_args(argv)

    cfg = get_preset(args.preset)
    device = resolve_device(cfg.device)
    images = torch.from_numpy(load_split(cfg.data, cfg.train_split).images)
    ckpt = build_checkpoint(cfg).to(device)
    if cfg.channels_last:
        ckpt = ckpt.to(memory_format=torch.channels_last)
    ckpt.train()
    opt = torch.optim.AdamW(ckpt.parameters(), lr=cfg.lr)
    n_wm = watermark_batch_size(cfg)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def step(batch: torch.Tensor, k: torch.Tensor | None) -> None:
        loss = batch_loss(ckpt, batch, k, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full_block() -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.from_numpy(rng.integers(0, len(images), cfg.batch_size))
            x = to_float(images[idx]).to(device)
            step(*make_batch(x, cfg, g, n_wm))
        return time.perf_counter() - t

    fixed_batch, fixed_k = make_batch(to_float(images[: cfg.batch_size]).to(device), cfg, g, n_wm)

    def raw_block() -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            step(fixed_batch, fixed_k)
        return time.perf_counter() - t

    per_step = fixed_batch.shape[0]
    raw_block(), full_block()  # warm-up
    full_t, raw_t = [], []
    for _ in range(args.rounds):
        full_t.append(full_block())
        raw_t.append(raw_block())
    full_ips = per_step * args.steps / statistics.median(full_t)
    raw_ips = per_step * args.steps / statistics.median(raw_t)
    ratio = full_ips / raw_ips
    rows = [
        {"step": "raw forward+backward", "images/s": f"{raw_ips:.0f}", "ratio": "1.00"},
        {"step": "full training step", "images/s": f"{full_ips:.0f}", "ratio": f"{ratio:.2f}"},
    ]
    print(f"preset {cfg.preset}: {cfg.arch} width {cfg.width}, batch {cfg.batch_size} (+{n_wm} watermark) "
          f"= {per_step} images per step, device {device}")
    print(table(rows, ["step", "images/s", "ratio"]))
    print(f"data pipeline + augmentation overhead: {100 * (1 - ratio):.1f}% (target <= 25%)")
    result = {"preset": cfg.preset, "images_per_step": per_step, "raw_images_per_s": raw_ips,
              "full_images_per_s": full_ips, "ratio": ratio, "overhead": 1 - ratio,
              "full_block_s": full_t, "raw_block_s": raw_t}
    print(f"wrote {write_json('train_throughput', result)}")
    return result


if __name__ == "__main__":
    main()
