"""Images on the wire: encode for requests (clients) and decode + validate + preprocess (server).

Decoding is defensive: strict base64, a byte cap per image, an allow-list of formats checked from
the file header (not from what the client claims), a pixel cap checked *before* the pixels are
decoded (decompression bombs), and truncated/corrupt files reported as :class:`ImageError` with
the index of the offending input, never as an unexpected exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


@dataclass
class ImageError(Exception):
    """A bad input image. ``status``: 413 too large, 415 format not allowed, 422 malformed."""

    index: int
    status: int
    type: str
    message: str

    @property
    def param(self) -> str:
        return f"input[{self.index}]"

    def __str__(self) -> str:
        return f"{self.param}: {self.message}"


@dataclass(frozen=True)
class ImageLimits:
    formats: tuple[str, ...] = FORMATS
    max_pixels: int = 4096 * 4096
    max_bytes: int = 8 * 1024 * 1024


def encode_image(img: np.ndarray | Image.Image, fmt: str = "PNG", data_uri: bool = False, **save_kw) -> str:
    """uint8 HWC array (or PIL image) -> base64 string (or data: URI) for a request."""
    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **save_kw)
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{b64}" if data_uri else b64


def _payload(s: str, index: int, limits: ImageLimits) -> bytes:
    s = s.strip()
    if s[:5].lower() == "data:":
        m = _DATA_URI.match(s)
        if not m:
            raise ImageError(index, 422, "invalid_image", "malformed data: URI (expected data:image/<type>;base64,<data>)")
        mime, params = m.group(1).lower(), m.group(2).lower()
        if ";base64" not in params:
            raise ImageError(index, 422, "invalid_image", "data: URI must be base64-encoded (;base64)")
        if mime and mime not in MIME:
            raise ImageError(index, 415, "unsupported_media_type",
                             f"data: URI media type {mime!r} not allowed; allowed: {', '.join(sorted(MIME))}")
        s = s[m.end():]
    # base64 of max_bytes bytes is 4/3 as long; refuse before decoding anything larger
    if len(s) > (limits.max_bytes * 4) // 3 + 8:
        raise ImageError(index, 413, "image_too_large", f"encoded image exceeds {limits.max_bytes} bytes")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(index, 422, "invalid_image", f"malformed base64: {e}") from None
    if not raw:
        raise ImageError(index, 422, "invalid_image", "empty image")
    if len(raw) > limits.max_bytes:
        raise ImageError(index, 413, "image_too_large", f"image is {len(raw)} bytes, limit {limits.max_bytes}")
    return raw


@contextmanager
def _image_errors(index: int) -> Iterator[None]:
    """Pillow's exceptions for a bad file -> :class:`ImageError` with the input's index."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(index, 413, "image_too_large", f"decompression bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(index, 422, "invalid_image", "not a decodable image (PNG, JPEG or WebP expected)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # truncated / corrupt streams
        raise ImageError(index, 422, "invalid_image", f"corrupt or truncated image: {e}") from None


def open_image(raw: bytes, index: int, limits: ImageLimits) -> Image.Image:
    """The file's header read and checked against ``limits`` (format, pixel cap); pixels not decoded."""
    with _image_errors(index):
        img = Image.open(io.BytesIO(raw), formats=None)
        fmt = (img.format or "").upper()
        if fmt not in limits.formats:
            raise ImageError(index, 415, "unsupported_media_type",
                             f"image format {fmt or 'unknown'} not allowed; allowed: {', '.join(limits.formats)}")
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(index, 422, "invalid_image", f"image has no pixels ({w}x{h})")
        if w * h > limits.max_pixels:
            raise ImageError(index, 413, "image_too_large",
                             f"image is {w}x{h} = {w * h} pixels, limit {limits.max_pixels} (decompression bomb guard)")
        return img


def load_rgb(img: Image.Image, index: int) -> Image.Image:
    """An image from :func:`open_image`, decoded and converted to RGB."""
    with _image_errors(index):
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated WebP: first frame only
        img.load()
        return to_rgb(img)


def decode_image(s: str, index: int, limits: ImageLimits) -> Image.Image:
    """base64 / data: URI -> RGB PIL image, validated against ``limits``."""
    return load_rgb(open_image(_payload(s, index, limits), index, limits), index)


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image in RGB: Pillow's ``convert("RGB")`` (alpha dropped, palette looked up, grey
    repeated, CMYK converted without a colour profile), except 16-bit grey (``I;16*``, what Pillow
    makes of a 16-bit greyscale PNG), whose samples keep their high byte, as Pillow reads 16-bit
    colour PNGs; ``convert`` would clip them to 255 (a white image)."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8), "L")
    return img.convert("RGB")


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """The size a w x h image takes when its shorter side is resized to ``size`` (before the crop)."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic), centre-crop to size x size; uint8 HWC."""
    w, h = img.size
    if (w, h) != (size, size):
        nw, nh = resized_size(w, h, size)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


class DeviceDecoder(Protocol):
    """Decodes some files elsewhere (``server.gpu_decode.DeviceJpegDecoder``: JPEG on the GPU)."""

    def eligible(self, img: Image.Image) -> bool: ...

    def decode(self, raws: Sequence[bytes]) -> np.ndarray: ...


def preprocess(inputs: list[str], size: int, limits: ImageLimits, device: DeviceDecoder | None = None) -> np.ndarray:
    """Decode, validate, convert to RGB, resize/centre-crop: uint8 (N, size, size, 3).

    Raises :class:`ImageError` for the first bad input (by index). The resized image, before the
    crop, is held to ``limits.max_pixels`` too: a long thin strip (1 x 100,000) would otherwise
    grow to ``size`` x (100,000 x ``size``) pixels. With ``device``, the inputs it calls eligible
    (after the same header checks) are decoded there in one call; if that call fails, Pillow decodes
    them and raises what it finds.
    """
    out = np.empty((len(inputs), size, size, 3), dtype=np.uint8)
    deferred: list[tuple[int, bytes, Image.Image]] = []
    for i, s in enumerate(inputs):
        raw = _payload(s, i, limits)
        img = open_image(raw, i, limits)
        (w, h), (nw, nh) = img.size, resized_size(*img.size, size)
        if nw * nh > limits.max_pixels:
            raise ImageError(i, 413, "image_too_large",
                             f"image is {w}x{h}: resizing its shorter side to {size} makes {nw}x{nh} = {nw * nh} pixels, "
                             f"limit {limits.max_pixels} (aspect ratio too extreme)")
        if device is not None and device.eligible(img):
            deferred.append((i, raw, img))
        else:
            out[i] = resize_center_crop(load_rgb(img, i), size)
    if device is not None and deferred:
        try:
            out[[i for i, _, _ in deferred]] = device.decode([raw for _, raw, _ in deferred])
        except RuntimeError:  # the device refused a file: Pillow decodes them all and names the bad one
            for i, _, img in deferred:
                out[i] = resize_center_crop(load_rgb(img, i), size)
    return out


def image_digests(images: np.ndarray) -> list[str]:
    """SHA-256 hex of each image's pixels (N, H, W, C uint8): how the server keys its randomness and
    obfuscation padding per input, and how a defender reproduces that keying locally."""
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]
