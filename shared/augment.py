"""SimCLR augmentations applied to whole batches of tensors (no per-image Python loop).

Input and output: float tensors (B, 3, H, W) in [0, 1], on any device. Each op draws its random
parameters per sample from the given ``torch.Generator`` (on the CPU, for reproducibility) and
applies them with one batched tensor operation:

- random resized crop + horizontal flip: one ``affine_grid`` / ``grid_sample`` call;
- colour jitter (brightness, contrast, saturation, hue) with probability p; hue is a rotation
  in the YIQ chroma plane, so the whole jitter is a few broadcast multiplies;
- random greyscale; 3x3 Gaussian blur with a per-sample sigma (grouped convolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

_LUMA = torch.tensor([0.299, 0.587, 0.114])
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


class AugmentSpec(BaseModel):
    """The reference SimCLR recipe for 32x32 images (stealing paper, section 2 of RESEARCH.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(default=0.5, ge=0, le=1)
    jitter_p: float = Field(default=0.8, ge=0, le=1)
    brightness: float = Field(default=0.8, ge=0)
    contrast: float = Field(default=0.8, ge=0)
    saturation: float = Field(default=0.8, ge=0)
    hue: float = Field(default=0.2, ge=0, le=0.5)
    gray_p: float = Field(default=0.2, ge=0, le=1)
    blur_p: float = Field(default=0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def random_resized_crop(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    """Crop a random box (area share in crop_scale, aspect in crop_ratio), resize back, maybe flip."""
    b = x.shape[0]
    area = _uniform(g, b, *spec.crop_scale)
    log_r = _uniform(g, b, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # as a share of the image side
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(_bernoulli(g, b, spec.flip_p), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    on = _bernoulli(g, b, spec.jitter_p).to(x.device)
    dev = x.device

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(g, b, max(0.0, 1 - strength), 1 + strength).to(dev)
        return torch.where(on, f, torch.ones_like(f)).view(b, 1, 1, 1)

    bright, contr, sat = factor(spec.brightness), factor(spec.contrast), factor(spec.saturation)
    hue = torch.where(on, _uniform(g, b, -spec.hue, spec.hue).to(dev), torch.zeros(b, device=dev))
    luma = _LUMA.to(dev, x.dtype).view(1, 3, 1, 1)
    # The four ops in a random order in torchvision; a fixed order here (the distribution is close).
    x = (x * bright).clamp(0, 1)
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * contr + mean).clamp(0, 1)
    gray = (x * luma).sum(1, keepdim=True)
    x = ((x - gray) * sat + gray).clamp(0, 1)
    yiq = torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(dev, x.dtype), x)
    ang = hue * 2 * math.pi
    cos, sin = torch.cos(ang).view(b, 1, 1), torch.sin(ang).view(b, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], i * cos - q * sin, i * sin + q * cos], 1)
    return torch.einsum("ij,bjhw->bihw", _YIQ2RGB.to(dev, x.dtype), yiq).clamp(0, 1)


def random_grayscale(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    on = _bernoulli(g, x.shape[0], spec.gray_p).to(x.device).view(-1, 1, 1, 1)
    gray = (x * _LUMA.to(x.device, x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    return torch.where(on, gray, x)


def gaussian_blur3(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    b, c, h, w = x.shape
    sigma = _uniform(g, b, *spec.blur_sigma)
    on = _bernoulli(g, b, spec.blur_p)
    d = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-(d[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    ident = torch.tensor([0.0, 1.0, 0.0]).expand(b, 3)
    k1 = torch.where(on[:, None], k1, ident)
    k2 = (k1[:, :, None] * k1[:, None, :]).to(x.device, x.dtype)  # (b, 3, 3)
    weight = k2.repeat_interleave(c, 0).unsqueeze(1)  # (b*c, 1, 3, 3)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="reflect"), weight, groups=b * c)
    return y.view(b, c, h, w)


def simclr_view(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    """One random SimCLR view of every image in the batch."""
    x = random_resized_crop(x, spec, g)
    x = color_jitter(x, spec, g)
    x = random_grayscale(x, spec, g)
    return gaussian_blur3(x, spec, g)


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by k[i] * 90 degrees (k in 0..3), batched per k."""
    out = torch.empty_like(x)
    for q in range(4):
        idx = (k == q).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = torch.rot90(x[idx], q, dims=(2, 3))
    return out


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(255)
