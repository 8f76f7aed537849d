"""Training throughput: the full training step vs the raw model step on the same batch.

full: gather B uint8 images from the split, convert, make two SimCLR views and the watermark
      rotations (batched tensor augmentation), forward, loss, backward, optimiser step (on CUDA
      as train() runs it: images on the device, AMP as the preset says, fused AdamW);
raw:  the same forward/loss/backward/step on a batch tensor that is already made.
Both are timed alternately in one run (A, B, A, B, ...) and compared as a ratio, so machine
noise hits both alike. The data-pipeline and augmentation overhead is 1 - full/raw (target <= 25%).

``--modes`` also times the raw step under other settings of the oneDNN AVX2 workaround
(``shared/cpu.py``), alternately in the same run: ``auto`` (what this process chose at start-up),
``on``, ``off`` (refused where the workaround is needed: it would crash) and ``no-onednn``
(oneDNN disabled, the blunt alternative). ``--width 4`` gives the stealing tests' ResNet, whose
first stride-2 shortcut is the layer the workaround reroutes; at the preset's width 16 no layer
is affected.

    uv run python -m bench.train_throughput [--preset cpu] [--steps 6] [--rounds 3]
    uv run python -m bench.train_throughput --width 4 --modes auto,on,off,no-onednn
    ONEDNN_MAX_CPU_ISA=AVX2 uv run python -m bench.train_throughput --modes auto,no-onednn --name train_throughput_avx2
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch

from bench.harness import table, write_json
from shared.augment import to_float
from shared.cpu import onednn_isa, set_strided_pointwise_workaround, strided_pointwise_workaround
from shared.data.synthetic import load_split
from shared.device import resolve_device
from shared.train import get_preset
from shared.train.simclr import batch_loss, build_checkpoint, make_batch, make_optimizer, watermark_batch_size


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=6, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating blocks of each kind")
    ap.add_argument("--width", type=int, help="override the preset's width (4: the stealing tests' ResNet)")
    ap.add_argument("--modes", default="auto", help="comma list of workaround modes for the raw step: auto, on, off, no-onednn")
    ap.add_argument("--name", default="train_throughput", help="results/cpu/<name>.json")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    needed = strided_pointwise_workaround()
    if "off" in modes and needed:
        ap.error("mode off is refused here: this process needs the workaround (oneDNN's AVX2 kernel would corrupt memory)")

    cfg = get_preset(args.preset)
    if args.width:
        cfg = cfg.model_copy(update={"width": args.width})
    device = resolve_device(cfg.device)
    images = torch.from_numpy(load_split(cfg.data, cfg.train_split).images)
    if device.type == "cuda":  # as train() does: the uint8 images live on the device
        images = images.to(device)
        torch.backends.cudnn.benchmark = True
    ckpt = build_checkpoint(cfg).to(device)
    if cfg.channels_last:
        ckpt = ckpt.to(memory_format=torch.channels_last)
    ckpt.train()
    opt = make_optimizer([p for p in ckpt.parameters() if p.requires_grad], cfg, device)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    n_wm = watermark_batch_size(cfg)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def sync() -> None:  # a timed block ends when the device has done its work
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(batch: torch.Tensor, k: torch.Tensor | None) -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = batch_loss(ckpt, batch, k, cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def full_block() -> float:
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.from_numpy(rng.integers(0, len(images), cfg.batch_size)).to(images.device)
            x = to_float(images[idx]).to(device)
            step(*make_batch(x, cfg, g, n_wm))
        sync()
        return time.perf_counter() - t

    fixed_batch, fixed_k = make_batch(to_float(images[: cfg.batch_size]).to(device), cfg, g, n_wm)

    def raw_block(mode: str = "auto") -> float:
        set_strided_pointwise_workaround({"on": True, "off": False}.get(mode))
        ctx = torch.backends.mkldnn.flags(enabled=False) if mode == "no-onednn" else nullcontext()
        try:
            with ctx:
                sync()
                t = time.perf_counter()
                for _ in range(args.steps):
                    step(fixed_batch, fixed_k)
                sync()
                return time.perf_counter() - t
        finally:
            set_strided_pointwise_workaround(None)

    per_step = fixed_batch.shape[0]
    full_block()  # warm-up
    for m in modes:
        raw_block(m)
    full_t: list[float] = []
    raw_t: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        full_t.append(full_block())
        for m in modes:
            raw_t[m].append(raw_block(m))
    full_ips = per_step * args.steps / statistics.median(full_t)
    raw_ips = {m: per_step * args.steps / statistics.median(raw_t[m]) for m in modes}
    base = raw_ips[modes[0]]
    ratio = full_ips / raw_ips["auto"] if "auto" in raw_ips else None
    rows = [{"step": f"raw forward+backward, workaround {m}", "images/s": f"{raw_ips[m]:.0f}", "ratio": f"{raw_ips[m] / base:.2f}"}
            for m in modes]
    rows.append({"step": "full training step (auto)", "images/s": f"{full_ips:.0f}", "ratio": f"{full_ips / base:.2f}"})
    isa = onednn_isa()
    print(f"preset {cfg.preset}: {cfg.arch} width {cfg.width}, batch {cfg.batch_size} (+{n_wm} watermark) "
          f"= {per_step} images per step, device {device}; oneDNN ISA {isa.family} ({isa.reason}), "
          f"workaround at start-up: {'on' if needed else 'off'}")
    print(table(rows, ["step", "images/s", "ratio"]))
    if ratio is not None:
        print(f"data pipeline + augmentation overhead: {100 * (1 - ratio):.1f}% (target <= 25%)")
    result = {"preset": cfg.preset, "width": cfg.width, "images_per_step": per_step, "onednn_isa": isa.family,
              "onednn_isa_reason": isa.reason, "workaround_at_startup": needed,
              "raw_images_per_s": raw_ips.get("auto"), "raw_images_per_s_by_mode": raw_ips,
              "full_images_per_s": full_ips, "ratio": ratio, "overhead": None if ratio is None else 1 - ratio,
              "full_block_s": full_t, "raw_block_s": raw_t}
    print(f"wrote {write_json('cpu', args.name, result)}")
    return result


MODES = ("auto", "on", "off", "no-onednn")


if __name__ == "__main__":
    main()
