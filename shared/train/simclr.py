"""SimCLR (NT-Xent) training with the rotation watermark trained jointly.

Each step takes B images, makes two SimCLR views of all of them as batched tensor ops, and
(for a watermarked victim) rotates a further ``watermark_fraction * B`` lightly cropped copies by
0/90/180/270 degrees. One forward pass of the encoder covers all of them; the projection head
feeds NT-Xent, the rotation predictor (in the optimiser, unlike the reference code) learns to
tell [0, 180) from [180, 360) on the representations. Adam, linear warm-up then cosine decay.

A resume state goes to the output folder at the end of an epoch once ``state_every_s`` seconds have
passed since the last one, after the run's last epoch, and when ``stop_after`` ends the run; a rerun
continues from the last one written and ends with the same weights as an uninterrupted run.

On CUDA the uint8 training images are uploaded once and every batch is gathered and converted on
the device; the loss is summed on the device and read once per epoch (the progress bar reads it
every ``PROGRESS_EVERY`` steps), and AdamW is the fused kernel, which also takes the AMP scaler's
overflow check without a host round trip. On the CPU the arithmetic is the one of a plain loop.

Under torchrun (:mod:`shared.train.distributed`) each of N processes trains on its ``B / N`` images
of every global batch of B, NT-Xent takes its negatives from all ranks, and rank 0 alone prints and
writes the resume state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from shared.augment import AugmentSpec, random_resized_crop, rotate90, simclr_view, to_float
from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec, WatermarkSpec, save_checkpoint
from shared.data.synthetic import load_split
from shared.device import resolve_device
from shared.losses import nt_xent
from shared.models import representation_dim
from shared.train import distributed
from shared.train.config import TrainConfig, result_fields
from shared.train.distributed import gather
from shared.train.state import load_state, read_state_meta, save_state

WATERMARK_CROP = AugmentSpec(crop_scale=(0.6, 1.0))
PROGRESS_EVERY = 25  # steps between the progress bar's loss readings (each one waits for the device)


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


def encode(ckpt: Checkpoint, batch: torch.Tensor, n_wm: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Projections of the two views (all rows but the last ``n_wm``) and watermark logits of the rotated crops."""
    assert ckpt.head is not None, "SimCLR training needs the projection head"
    y = ckpt.encoder(batch)
    m = batch.shape[0] - n_wm
    z = ckpt.head(y[:m])
    if not n_wm:
        return z, None
    assert ckpt.watermark is not None, "rotated crops need the watermark"
    return z, ckpt.watermark(y[m:])


def contrastive_loss(ckpt: Checkpoint, z: torch.Tensor, logits: torch.Tensor | None, k: torch.Tensor | None,
                     cfg: TrainConfig) -> torch.Tensor:
    """NT-Xent on the two views' projections (negatives from every rank), plus the watermark
    cross-entropy on the rotated crops' logits (this rank's; DDP averages it over the ranks)."""
    b = z.shape[0] // 2
    loss = nt_xent(gather(z[:b].float()), gather(z[b:].float()), cfg.temperature)
    if k is not None:
        assert logits is not None and ckpt.config.watermark is not None, "rotated crops need the watermark"
        labels = ckpt.config.watermark.labels(k).to(logits.device)
        loss = loss + cfg.watermark_weight * F.cross_entropy(logits.float(), labels)
    return loss


def batch_loss(ckpt: Checkpoint, batch: torch.Tensor, k: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    """The loss of a batch from :func:`make_batch`: two views of b images, then ``len(k)`` rotated crops."""
    z, logits = encode(ckpt, batch, 0 if k is None else len(k))
    return contrastive_loss(ckpt, z, logits, k, cfg)


class SimCLRStep(nn.Module):
    """A batch of views -> the loss: the module DistributedDataParallel wraps (its forward is the step's)."""

    def __init__(self, ckpt: Checkpoint, cfg: TrainConfig) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.cfg = cfg

    def forward(self, batch: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
        return batch_loss(self.ckpt, batch, k, self.cfg)


def watermark_batch_size(cfg: TrainConfig, batch: int | None = None) -> int:
    """Rotated crops per step for ``batch`` images (default: the config's batch)."""
    b = cfg.batch_size if batch is None else batch
    return max(2, int(b * cfg.watermark_fraction)) if cfg.watermark else 0


def epoch_generator(cfg: TrainConfig, epoch: int, world: distributed.World) -> torch.Generator:
    """The augmentation's random stream of an epoch: rank 0 (a single process) keeps the historical
    seed, every other rank draws its own."""
    seed = cfg.seed * 1_000_003 + epoch if world.main else distributed.rank_seed(cfg.seed, epoch, world.rank)
    return torch.Generator().manual_seed(seed)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch per step, and GradScaler hands it the overflow flag
    on the device instead of reading it on the host)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if device.type == "cuda" else None)


@dataclass
class TrainOutcome:
    checkpoint: Checkpoint
    epochs_run: int
    resumed_from: int
    images_per_s: float
    seconds: float
    losses: list[float]
    processes: int = 1


def train(cfg: TrainConfig, out: Path, progress: bool = True, stop_after: int | None = None) -> TrainOutcome:
    """Train (or resume) into ``out``; returns the trained checkpoint (not yet saved as final).

    ``stop_after`` ends the run after that many epochs in total (a resume state is written), as a
    kill would; calling again with the same configuration continues from there. Under torchrun every
    rank calls this; each returns the same weights, and only rank 0 writes to ``out``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world, device = distributed.init(resolve_device(cfg.device))
    b = distributed.local_batch(cfg.batch_size, world)
    if not world.main:
        distributed.barrier()  # rank 0 renders the split into the data cache first; the others read it
    data = load_split(cfg.data, cfg.train_split, progress=progress and world.main)
    if world.main:
        distributed.barrier()
    if cfg.train_size is not None and cfg.train_size > len(data):
        raise ValueError(f"train_size={cfg.train_size} but split {cfg.train_split!r} has {len(data)} images")
    images = torch.from_numpy(data.images[: cfg.train_size])  # uint8 (N, H, W, 3)
    n = len(images)
    if n < cfg.batch_size:
        raise ValueError(f"split {cfg.train_split!r} has {n} images, fewer than one batch of {cfg.batch_size}")
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if device.type == "cuda":
        images = images.to(device)  # once: batches are gathered and converted on the device
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once

    ckpt = build_checkpoint(cfg).to(device)
    if cfg.channels_last:
        ckpt = ckpt.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub of Module.to lacks memory_format
    params = [p for p in ckpt.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, device)
    previous = read_state_meta(out)
    if previous and result_fields(previous.get("config") or {}) != result_fields(cfg.model_dump(mode="json")):
        raise ValueError(f"{out} holds a resume state of another configuration; use another --out or delete it")
    meta = load_state(out, ckpt, opt)
    start = meta["epoch"] if meta else 0
    losses: list[float] = list(meta.get("losses", [])) if meta else []
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if meta and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    model = distributed.wrap(SimCLRStep(ckpt, cfg), device)
    n_wm = watermark_batch_size(cfg, b)
    show = progress and world.main

    model.train()
    t0, seen = time.perf_counter(), 0
    saved_at = time.monotonic()
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start, last):
        perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(n)).to(images.device)
        g = epoch_generator(cfg, epoch, world)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # read once, at the epoch's end
        for step in bar:
            gstep = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = lr_at(gstep, total_steps, warmup, cfg.lr)
            x = to_float(images[perm[distributed.rank_slice(step, cfg.batch_size, world)]]).to(device)
            batch, k = make_batch(x, cfg, g, n_wm)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = model(batch, k)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += batch.shape[0] * world.size
            loss_sum += loss.detach()
            if show and (step + 1) % PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        losses.append(distributed.mean_over_ranks(loss_sum).item() / steps_per_epoch)
        if show:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {losses[-1]:.4f}  {seen / (time.perf_counter() - t0):.0f} img/s")
        if world.main and (epoch + 1 == last or time.monotonic() - saved_at >= cfg.state_every_s):
            save_state(out, ckpt, opt, epoch + 1, {"losses": losses, "config": cfg.model_dump(mode="json"),
                                                   "scaler": scaler.state_dict()})
            saved_at = time.monotonic()
    seconds = time.perf_counter() - t0
    if distributed.has_sync_batchnorm(ckpt):  # back to plain BatchNorm layers for evaluation and saving
        plain = build_checkpoint(cfg).to(device)
        plain.load_state_dict(ckpt.state_dict())
        ckpt = plain
    ckpt = ckpt.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stub of Module.to lacks memory_format
    return TrainOutcome(ckpt, max(0, last - start), start, seen / seconds if seconds > 0 else 0.0, seconds, losses, world.size)


def finalize(outcome: TrainOutcome, out: Path, metrics: dict) -> Path:
    outcome.checkpoint.config.metrics = metrics
    outcome.checkpoint.config.training["losses"] = outcome.losses
    return save_checkpoint(outcome.checkpoint, out)
