"""JPEG decoding on the inference device (nvJPEG through ``torchvision.io.decode_jpeg``), used only
where it beats Pillow on the CPU.

``shared.images.preprocess`` decodes with Pillow, converts to RGB, resizes the shorter side
bicubically and centre-crops. :class:`DeviceJpegDecoder` does the same on the device for a request's
eligible JPEGs at once: one batched ``decode_jpeg`` call, then for each image torch's antialiased
bicubic resize (its kernel is Pillow's, a = -0.5), the same crop, and rounding to uint8. Validation
does not move: every input still goes through Pillow's header checks (format allow-list, pixel cap,
aspect cap) first, and any file the device decoder fails on is decoded again by Pillow, which
raises the request's usual error.

The two decoders are not bit-identical (IDCT and rounding differ, and Pillow's resize reduces by
whole factors first): on foolbox's 20 real ImageNet JPEGs at 32 px the pixels differ by 0.4 levels
on average (``tests/server/test_gpu_decode.py`` measures the decoder, the resize and the embeddings
with torchvision's CPU decoder standing in for nvJPEG).

Eligible: a JPEG whose header says RGB or L (CMYK and the rest stay on Pillow) and whose shorter
side is at least ``min_side``. :meth:`DeviceJpegDecoder.calibrate` times both ways at startup on
synthetic JPEGs of growing size and sets ``min_side`` to the smallest size from which the device is
faster (``None``: never), so the server uses the device only where it measured a gain.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.images import resize_center_crop, resized_size, to_rgb

log = logging.getLogger("heist.gpu_decode")

CALIBRATION_SIDES = (32, 64, 128, 256, 512, 1024)
MODES = frozenset({"RGB", "L"})


def resize_center_crop_tensor(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> uint8 (size, size, 3): the shorter side resized to ``size``
    (antialiased bicubic), centre-cropped, rounded; ``shared.images.resize_center_crop``'s geometry."""
    _, h, w = img.shape
    if (w, h) == (size, size):
        return img.permute(1, 2, 0)
    nw, nh = resized_size(w, h, size)
    x = F.interpolate(img.unsqueeze(0).float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    left, top = (nw - size) // 2, (nh - size) // 2
    x = x[0, :, top:top + size, left:left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


@dataclass
class DeviceJpegDecoder:
    device: torch.device
    size: int
    min_side: int | None = 0  # eligible from this shorter side up; None: never (set by calibrate)
    timings: list[dict] = field(default_factory=list)  # calibrate()'s measurements

    def eligible(self, img: Image.Image) -> bool:
        """A Pillow image opened (header only) that this decoder takes."""
        return (self.min_side is not None and img.format == "JPEG" and img.mode in MODES
                and min(img.size) >= self.min_side)

    def decode(self, raws: Sequence[bytes]) -> np.ndarray:
        """JPEG files -> uint8 (N, size, size, 3) on the host. Raises RuntimeError where nvJPEG
        (or the CPU decoder standing in for it) refuses a file."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raws]
        if self.device.type == "cuda":
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        else:  # torchvision's CPU decoder takes one file per call
            decoded = [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        out = torch.stack([resize_center_crop_tensor(t, self.size) for t in decoded])
        return out.cpu().numpy()

    def calibrate(self, batch: int = 16, repeats: int = 3, sides: Sequence[int] = CALIBRATION_SIDES) -> int | None:
        """Time Pillow against this decoder on ``batch`` synthetic JPEGs per side; set and return
        ``min_side``: the smallest side from which the device wins at every larger side (None: never)."""
        rng = np.random.default_rng(0)
        self.timings = []
        wins: list[bool] = []
        try:
            for side in sides:
                raws = [_jpeg(_smooth_image(rng, side)) for _ in range(batch)]
                self.decode(raws[:2])  # warm-up (nvJPEG handles, kernels)
                cpu, dev = _best(self.pillow, raws, repeats), _best(self.decode, raws, repeats)
                self.timings.append({"side": side, "cpu_ms": round(cpu * 1e3, 3), "device_ms": round(dev * 1e3, 3)})
                wins.append(dev < cpu)
        except Exception:  # noqa: BLE001 - a device that cannot decode is never used
            log.exception("device JPEG decoding failed during calibration: Pillow decodes every image")
            self.min_side = None
            return None
        chosen = None
        for side, won in zip(reversed(sides), reversed(wins), strict=True):  # from which side on the device always wins
            if not won:
                break
            chosen = side
        self.min_side = chosen
        log.info("device JPEG decoding from a shorter side of %s px", chosen,
                 extra={"device": str(self.device), "timings": self.timings})
        return chosen

    def pillow(self, raws: Sequence[bytes]) -> np.ndarray:
        """The CPU path's pixels for the same files (``shared.images``), for comparison."""
        return np.stack([resize_center_crop(to_rgb(Image.open(io.BytesIO(r))), self.size) for r in raws])


def _smooth_image(rng: np.random.Generator, side: int) -> np.ndarray:
    """A photo-like test image (smooth gradients and noise), so JPEG sizes resemble real photos'."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in (0.0, 1.0, 2.0)], axis=-1)
    return np.clip(127.5 + 100 * base + rng.normal(0, 8, (side, side, 3)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _best(fn: Callable[[Sequence[bytes]], np.ndarray], raws: Sequence[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(raws)  # returns host arrays: the device's work is done
        best = min(best, time.perf_counter() - t0)
    return best
