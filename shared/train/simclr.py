"""SimCLR (NT-Xent) training with the rotation watermark trained jointly.

Each step takes B images, makes two SimCLR views of all of them as batched tensor ops, and
(for a watermarked victim) rotates a further ``watermark_fraction * B`` lightly cropped copies by
0/90/180/270 degrees. One forward pass of the encoder covers all of them; the projection head
feeds NT-Xent, the rotation predictor (in the optimiser, unlike the reference code) learns to
tell [0, 180) from [180, 360) on the representations. Adam, linear warm-up then cosine decay.
Every epoch ends with a resume state in the output folder; a rerun continues from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shared.augment import AugmentSpec, random_resized_crop, rotate90, simclr_view, to_float
from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec, WatermarkSpec, save_checkpoint
from shared.data.synthetic import load_split
from shared.device import resolve_device
from shared.losses import nt_xent
from shared.models import representation_dim
from shared.train.config import TrainConfig
from shared.train.state import load_state, read_state_meta, save_state

WATERMARK_CROP = AugmentSpec(crop_scale=(0.6, 1.0))


def build_checkpoint(cfg: TrainConfig) -> Checkpoint:
    d = representation_dim(cfg.arch, cfg.width)
    config = EncoderConfig(
        kind=cfg.kind,
        arch=cfg.arch,
        width=cfg.width,
        input_size=cfg.data.image_size,
        representation_dim=d,
        head=HeadSpec(hidden_dim=d, out_dim=cfg.proj_dim),
        watermark=WatermarkSpec() if cfg.watermark else None,
        data={"spec": cfg.data.model_dump(), "train_split": cfg.train_split, "train_size": cfg.train_size},
        training=cfg.model_dump(exclude={"data"}),
        seed=cfg.seed,
    )
    torch.manual_seed(cfg.seed)
    return Checkpoint(config)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def make_batch(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator, n_wm: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Two SimCLR views of every image, then ``n_wm`` rotated crops (quarter turns ``k``)."""
    views = [simclr_view(x, cfg.augment, g), simclr_view(x, cfg.augment, g)]
    k = None
    if n_wm:
        k = torch.randint(0, 4, (n_wm,), generator=g)
        views.append(rotate90(random_resized_crop(x[:n_wm], WATERMARK_CROP, g), k.to(x.device)))
    batch = torch.cat(views)
    if cfg.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch, k


def batch_loss(ckpt: Checkpoint, batch: torch.Tensor, k: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    """NT-Xent on the two views' projections, plus the watermark cross-entropy on the rotated part."""
    b = cfg.batch_size
    assert ckpt.head is not None, "SimCLR training needs the projection head"
    y = ckpt.encoder(batch)
    z = ckpt.head(y[: 2 * b])
    loss = nt_xent(z[:b].float(), z[b:].float(), cfg.temperature)
    if k is not None:
        assert ckpt.watermark is not None and ckpt.config.watermark is not None, "rotated crops need the watermark"
        labels = ckpt.config.watermark.labels(k).to(batch.device)
        loss = loss + cfg.watermark_weight * F.cross_entropy(ckpt.watermark(y[2 * b :]).float(), labels)
    return loss


def watermark_batch_size(cfg: TrainConfig) -> int:
    return max(2, int(cfg.batch_size * cfg.watermark_fraction)) if cfg.watermark else 0


@dataclass
class TrainOutcome:
    checkpoint: Checkpoint
    epochs_run: int
    resumed_from: int
    images_per_s: float
    seconds: float
    losses: list[float]


def train(cfg: TrainConfig, out: Path, progress: bool = True, stop_after: int | None = None) -> TrainOutcome:
    """Train (or resume) into ``out``; returns the trained checkpoint (not yet saved as final).

    ``stop_after`` ends the run after that many epochs in total (the resume state is kept), as a
    kill would; calling again with the same configuration continues from there.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_split(cfg.data, cfg.train_split, progress=progress)
    if cfg.train_size is not None and cfg.train_size > len(data):
        raise ValueError(f"train_size={cfg.train_size} but split {cfg.train_split!r} has {len(data)} images")
    images = torch.from_numpy(data.images[: cfg.train_size])  # uint8, converted per batch
    n = len(images)
    if n < cfg.batch_size:
        raise ValueError(f"split {cfg.train_split!r} has {n} images, fewer than one batch of {cfg.batch_size}")
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    ckpt = build_checkpoint(cfg).to(device)
    if cfg.channels_last:
        ckpt = ckpt.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub of Module.to lacks memory_format
    params = [p for p in ckpt.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    previous = read_state_meta(out)
    if previous and previous.get("config") != cfg.model_dump(mode="json"):
        raise ValueError(f"{out} holds a resume state of another configuration; use another --out or delete it")
    meta = load_state(out, ckpt, opt)
    start = meta["epoch"] if meta else 0
    losses: list[float] = list(meta.get("losses", [])) if meta else []
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    n_wm = watermark_batch_size(cfg)

    ckpt.train()
    t0, seen = time.perf_counter(), 0
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start, last):
        perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(n))
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        epoch_loss = 0.0
        for step in bar:
            gstep = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = lr_at(gstep, total_steps, warmup, cfg.lr)
            x = to_float(images[perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]]).to(device)
            batch, k = make_batch(x, cfg, g, n_wm)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = batch_loss(ckpt, batch, k, cfg)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += batch.shape[0]
            epoch_loss += loss.item()
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
        losses.append(epoch_loss / steps_per_epoch)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {losses[-1]:.4f}  {seen / (time.perf_counter() - t0):.0f} img/s")
        save_state(out, ckpt, opt, epoch + 1, {"losses": losses, "config": cfg.model_dump(mode="json")})
    seconds = time.perf_counter() - t0
    ckpt = ckpt.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stub of Module.to lacks memory_format
    return TrainOutcome(ckpt, max(0, last - start), start, seen / seconds if seconds > 0 else 0.0, seconds, losses)


def finalize(outcome: TrainOutcome, out: Path, metrics: dict) -> Path:
    outcome.checkpoint.config.metrics = metrics
    outcome.checkpoint.config.training["losses"] = outcome.losses
    return save_checkpoint(outcome.checkpoint, out)
