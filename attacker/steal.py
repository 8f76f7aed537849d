"""Training the stolen copy f_a from bought victim answers (stealing paper, StolenEncoder).

Modes (RESEARCH.md section 3):

- ``direct``: f_a(x) is trained to match the victim's representation y_v = f_v(x) with the chosen
  loss; when f_a's dimension differs from the victim's, a linear adapter (training only) maps it.
- ``recreate-head``: first a head h is learnt on the victim's answers alone (SimSiam between two
  feature-level views of each answer: dropout + Gaussian jitter; no extra queries), then frozen;
  f_a is trained with the loss in head space: loss(h(f_a(x)), h(y_v)).
- ``access-head``: the API exposes projections z_v = g_v(y_v) (tiers that allow ``projection``);
  f_a and its own head g_a are trained so that g_a(f_a(x)) matches z_v. The head is saved with
  the checkpoint.

StolenEncoder augmentation reuse (``aug_reuse`` = k > 0): the loss becomes
d(f_a(x), y_v) + (lambda / k) * sum_i d(f_a(aug_i(x)), y_v) with lambda = 9: the k augmented
views reuse the victim's answer for the clean image, so augmentation costs no queries.

Under torchrun (:mod:`shared.train.distributed`) every rank gets the same queries and answers and
trains on its ``batch_size / N`` of each global batch; the loss is computed on the outputs gathered
from all ranks (with gradient), so InfoNCE's negatives and every other loss's batch statistics span
the global batch. On CUDA the queries and answers are uploaded once and the loss is read once per
epoch (a non-finite epoch loss stops the run).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from shared.augment import AugmentSpec, simclr_view, to_float
from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec
from shared.losses import STEALING_LOSSES, barlow_twins, infonce, mse, simsiam, soft_nn, supcon, wasserstein
from shared.models import ProjectionHead, representation_dim
from shared.train import distributed
from shared.train.distributed import gather
from shared.train.simclr import lr_at

MODES = ("direct", "recreate-head", "access-head")
AUG_LAMBDA = 9.0  # StolenEncoder's weight of the augmented views


@dataclass(frozen=True)
class StealConfig:
    loss: str = "mse"
    mode: str = "direct"
    arch: str = "resnet18"
    width: int = 16
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    aug_reuse: int = 0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.loss not in STEALING_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(STEALING_LOSSES)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.aug_reuse < 0 or self.width < 1:
            raise ValueError("epochs >= 1, batch_size >= 2, lr > 0, aug_reuse >= 0 and width >= 1 are required")


def _predictor(d: int) -> nn.Module:
    h = max(16, d // 4)
    return nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, d))


class StealingLoss(nn.Module):
    """One of the stealing losses at its reference defaults, with the learnable parts SimSiam needs."""

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        self.name = name
        self.predictor = _predictor(dim) if name == "simsiam" else None

    def forward(self, s: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n = self.name
        if n == "mse":
            return mse(s, v)
        if n == "infonce":
            return infonce(s, v)
        if n == "softnn":
            return soft_nn(s, v)
        if n == "wasserstein":
            return wasserstein(s, v)
        if n == "barlow":
            return barlow_twins(s, v)
        if n == "supcon":
            if labels is None:
                raise ValueError("supcon needs query labels; this query set has none")
            return supcon(s, v, labels)
        return simsiam(self.predictor(s), v, self.predictor(v), s)


def recreate_head(victim: np.ndarray, out_dim: int = 64, steps: int = 300, seed: int = 0) -> ProjectionHead:
    """A head learnt on victim answers only: SimSiam between two feature-level views (dropout 0.2 +
    Gaussian jitter at 10% of the per-dimension spread). Cheap (a small MLP) and query-free."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = torch.from_numpy(victim).float()
    d = y.shape[1]
    head = ProjectionHead(d, d, out_dim)
    pred = _predictor(out_dim)
    opt = torch.optim.Adam([*head.parameters(), *pred.parameters()], lr=1e-3)
    sd = y.std(0, keepdim=True) + 1e-6
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(256, len(y)),), generator=g)
        b = y[idx]
        v1 = F.dropout(b, 0.2) + 0.1 * sd * torch.randn(b.shape, generator=g)
        v2 = F.dropout(b, 0.2) + 0.1 * sd * torch.randn(b.shape, generator=g)
        z1, z2 = head(v1), head(v2)
        loss = simsiam(pred(z1), z2, pred(z2), z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval().requires_grad_(False)


class StealModel(nn.Module):
    """Queries (and K augmented copies) -> the stealing loss against the victim's answers: the module
    DistributedDataParallel wraps. Outputs, answers and labels are gathered over the ranks before the
    loss, so every rank computes the loss of the global batch."""

    def __init__(self, ckpt: Checkpoint, adapter: nn.Module, vhead: nn.Module | None, crit: StealingLoss) -> None:
        super().__init__()
        self.ckpt, self.adapter, self.crit = ckpt, adapter, crit
        self._vhead = [vhead]  # frozen, outside the module tree: train() leaves it in eval mode, DDP ignores it

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the loss compares with the (head-mapped) victim answer."""
        y = self.ckpt.encoder(x)
        y = self.ckpt.head(y) if self.ckpt.head is not None else self.adapter(y)
        vhead = self._vhead[0]
        return vhead(y) if vhead is not None else y

    def forward(self, x: torch.Tensor, tv: torch.Tensor, labels: torch.Tensor | None, k: int = 0) -> torch.Tensor:
        """``x``: the B queries, then (``k`` > 0) K augmented copies of them, B rows each."""
        tv = gather(tv)
        labels = None if labels is None else gather(labels)
        if not k:
            return self.crit(gather(self.features(x)), tv, labels)
        outs = self.features(x).chunk(k + 1)
        return self.crit(gather(outs[0]), tv, labels) + (AUG_LAMBDA / k) * sum(
            self.crit(gather(o), tv, labels) for o in outs[1:])


@dataclass
class StealParts:
    """What a stealing run trains: the stolen checkpoint, the loss module around it, the victim-side head
    (recreate-head) and the optimiser."""

    ckpt: Checkpoint
    model: StealModel
    vhead: nn.Module | None
    opt: torch.optim.Optimizer


def build_steal(cfg: StealConfig, answers: np.ndarray, device: torch.device, extra_config: dict | None = None) -> StealParts:
    """The models and optimiser of a run, initialised from ``cfg.seed`` (the same on every rank)."""
    torch.manual_seed(cfg.seed)
    d = representation_dim(cfg.arch, cfg.width)
    target_dim = answers.shape[1]
    head_spec = HeadSpec(hidden_dim=d, out_dim=target_dim) if cfg.mode == "access-head" else None
    config = EncoderConfig(kind="stolen", arch=cfg.arch, width=cfg.width, representation_dim=d, head=head_spec,
                           training={"steal": asdict(cfg), **(extra_config or {})}, seed=cfg.seed)
    ckpt = Checkpoint(config).to(device)
    adapter: nn.Module = nn.Identity()
    if cfg.mode != "access-head" and d != target_dim:
        adapter = nn.Linear(d, target_dim)
    vhead: nn.Module | None = recreate_head(answers, seed=cfg.seed).to(device) if cfg.mode == "recreate-head" else None
    loss_dim = vhead.net[-1].out_features if vhead is not None else target_dim
    crit = StealingLoss(cfg.loss, loss_dim).to(device)
    adapter = adapter.to(device)
    params = [*ckpt.encoder.parameters(), *adapter.parameters(), *crit.parameters()]
    if ckpt.head is not None:
        params += list(ckpt.head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if device.type == "cuda" else None)
    return StealParts(ckpt, StealModel(ckpt, adapter, vhead, crit), vhead, opt)


def train_stolen(images: np.ndarray, answers: np.ndarray, cfg: StealConfig, labels: np.ndarray | None = None,
                 extra_config: dict | None = None, progress: bool = True) -> tuple[Checkpoint, dict]:
    """Train f_a on (images, victim answers); returns the stolen checkpoint (kind="stolen") and a history.

    Under torchrun every rank calls this with the same arguments and gets the same weights back."""
    if len(images) != len(answers):
        raise ValueError(f"{len(images)} images but {len(answers)} answers")
    if len(images) < cfg.batch_size:
        raise ValueError(f"{len(images)} queries are fewer than one batch of {cfg.batch_size}; lower --batch-size")
    if cfg.loss == "supcon" and labels is None:
        raise ValueError("supcon needs query labels; this query set has none")
    world, device = distributed.init(torch.device(cfg.device))
    distributed.local_batch(cfg.batch_size, world)  # refuses a batch that does not split over the ranks
    parts = build_steal(cfg, answers, device, extra_config)
    ckpt, vhead, opt, config = parts.ckpt, parts.vhead, parts.opt, parts.ckpt.config
    model = distributed.wrap(parts.model, device)

    on_device = device.type == "cuda"  # CUDA: uploaded once, batches gathered on the device
    x_all = torch.from_numpy(images)
    v_all = torch.from_numpy(answers.astype(np.float32))
    y_all = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    if on_device:
        x_all, v_all = x_all.to(device), v_all.to(device)
        y_all = None if y_all is None else y_all.to(device)
    n = len(images)
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 20)
    g = torch.Generator().manual_seed(cfg.seed)  # the order of the queries: the same on every rank
    aug_g = g if not world.distributed else torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, world.rank))
    aug = AugmentSpec()
    history: list[float] = []
    step = 0
    t0 = time.perf_counter()

    model.train()
    bar = tqdm(total=total, desc=f"steal {cfg.loss}/{cfg.mode}", unit="step", disable=not (progress and world.main))
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g).to(x_all.device)
        run = torch.zeros((), dtype=torch.float64, device=device)  # read once, at the epoch's end
        for b in range(steps_per_epoch):
            idx = perm[distributed.rank_slice(b, cfg.batch_size, world)]
            x = to_float(x_all[idx]).to(device)
            v = v_all[idx].to(device)
            yl = None if y_all is None else y_all[idx].to(device)
            tv = vhead(v) if vhead is not None else v
            k = cfg.aug_reuse
            if k:
                x = torch.cat([x, *(simclr_view(x, aug, aug_g) for _ in range(k))])
            loss = model(x, tv, yl, k)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, warmup, cfg.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.detach()
            step += 1
            bar.update(1)
        history.append(distributed.mean_over_ranks(run).item() / max(1, steps_per_epoch))
        if not math.isfinite(history[-1]):
            raise FloatingPointError(f"loss became {history[-1]} in epoch {epoch + 1}; lower --lr")
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    if distributed.has_sync_batchnorm(ckpt):  # back to plain BatchNorm layers for evaluation and saving
        plain = Checkpoint(config)
        plain.load_state_dict(ckpt.state_dict())
        ckpt = plain
    ckpt.eval()
    secs = time.perf_counter() - t0
    ckpt.config.training["losses"] = [round(h, 6) for h in history]
    ckpt.config.training["train_seconds"] = round(secs, 1)
    ckpt.config.training["processes"] = world.size
    return ckpt.cpu(), {"losses": history, "train_seconds": secs, "steps": total, "processes": world.size}
