"""Linear probe: frozen encoder, features computed once, one linear layer (multinomial logistic
regression with L2, full-batch L-BFGS from a zero start). Deterministic for the same features;
used for victims, stolen copies and independent encoders alike, and by the API's customers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from shared.augment import to_float


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: np.ndarray, batch_size: int = 512, device: str | torch.device = "cpu", progress: bool = False
) -> np.ndarray:
    """Representations of uint8 (N, H, W, 3) images under ``encoder`` in eval mode, float32 (N, D)."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
            x = to_float(torch.from_numpy(images[i : i + batch_size])).to(device)
            out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    train_top1: float
    n_train: int
    n_test: int
    n_classes: int

    def as_dict(self) -> dict:
        return asdict(self)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    l2: float = 1e-4,
    max_iter: int = 300,
) -> ProbeResult:
    """Fit a linear classifier on standardised train features, report top-1 on test."""
    if not (np.isfinite(train_x).all() and np.isfinite(test_x).all()):
        raise ValueError("features contain NaN or inf")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mu) / sd).double()
    xte = torch.from_numpy((test_x - mu) / sd).double()
    ytr, yte = torch.from_numpy(train_y).long(), torch.from_numpy(test_y).long()
    w = torch.zeros(xtr.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        tr = ((xtr @ w + b).argmax(1) == ytr).double().mean().item()
        te = ((xte @ w + b).argmax(1) == yte).double().mean().item()
    return ProbeResult(top1=te, train_top1=tr, n_train=len(ytr), n_test=len(yte), n_classes=n_classes)
