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
"""

from __future__ import annotations

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


def train_stolen(images: np.ndarray, answers: np.ndarray, cfg: StealConfig, labels: np.ndarray | None = None,
                 extra_config: dict | None = None, progress: bool = True) -> tuple[Checkpoint, dict]:
    """Train f_a on (images, victim answers); returns the stolen checkpoint (kind="stolen") and a history."""
    if len(images) != len(answers):
        raise ValueError(f"{len(images)} images but {len(answers)} answers")
    if len(images) < cfg.batch_size:
        raise ValueError(f"{len(images)} queries are fewer than one batch of {cfg.batch_size}; lower --batch-size")
    if cfg.loss == "supcon" and labels is None:
        raise ValueError("supcon needs query labels; this query set has none")
    device = torch.device(cfg.device)
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
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    x_all = torch.from_numpy(images)
    v_all = torch.from_numpy(answers.astype(np.float32))
    y_all = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    n = len(images)
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 20)
    g = torch.Generator().manual_seed(cfg.seed)
    aug = AugmentSpec()
    history: list[float] = []
    step = 0
    t0 = time.perf_counter()

    def out_of(x: torch.Tensor) -> torch.Tensor:
        y = ckpt.encoder(x)
        y = ckpt.head(y) if ckpt.head is not None else adapter(y)
        return vhead(y) if vhead is not None else y

    ckpt.train()
    bar = tqdm(total=total, desc=f"steal {cfg.loss}/{cfg.mode}", unit="step", disable=not progress)
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        run = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = to_float(x_all[idx]).to(device)
            v = v_all[idx].to(device)
            yl = None if y_all is None else y_all[idx].to(device)
            tv = vhead(v) if vhead is not None else v
            k = cfg.aug_reuse
            if k:
                views = torch.cat([x, *(simclr_view(x, aug, g) for _ in range(k))])
                outs = out_of(views).chunk(k + 1)
                loss = crit(outs[0], tv, yl) + (AUG_LAMBDA / k) * sum(crit(o, tv, yl) for o in outs[1:])
            else:
                loss = crit(out_of(x), tv, yl)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, warmup, cfg.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item()
            step += 1
            bar.update(1)
        history.append(run / max(1, steps_per_epoch))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    ckpt.eval()
    secs = time.perf_counter() - t0
    ckpt.config.training["losses"] = [round(h, 6) for h in history]
    ckpt.config.training["train_seconds"] = round(secs, 1)
    return ckpt.cpu(), {"losses": history, "train_seconds": secs, "steps": total}
