"""Rotation watermark: rotated copies of images and the predictor's accuracy on them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.checkpoint import WatermarkSpec


def rotated_copies(images: np.ndarray, spec: WatermarkSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every image at every angle of the spec (counter-clockwise): uint8 (N*A, H, W, 3) and labels."""
    out, labels = [], []
    for angle in spec.angles:
        if angle % 90:
            raise ValueError(f"watermark angles must be multiples of 90, got {angle}")
        out.append(np.rot90(images, k=angle // 90, axes=(1, 2)))
        labels.append(np.full(len(images), int(angle >= 180), dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(out)), np.concatenate(labels)


@torch.no_grad()
def predict(predictor: nn.Module, features: np.ndarray) -> np.ndarray:
    """The predictor's rotation label (0: [0, 180), 1: [180, 360)) for each representation."""
    predictor.eval()
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(next(predictor.parameters()).device)
    return predictor(x).argmax(1).cpu().numpy()


def predictor_accuracy(predictor: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(predictor, features) == labels).mean())
