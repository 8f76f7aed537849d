"""Vectorised renderer of the procedural "heist shapes" images.

A chunk of images is drawn from one seeded generator: every parameter is sampled as a vector for
the chunk, every layer is painted with array operations over the whole chunk at 2x resolution and
box-filtered down (anti-aliasing). Layers, back to front:

1. background: a vertical gradient lit from the top, low-frequency colour blobs and gratings
   (``photo``), or paper grain and pencil hatching (``sketch``, the shifted domain);
2. clutter behind the object: discs, bars and squares of random colours;
3. a soft shadow cast down-right (``photo``);
4. the object: one of ten upright shapes (+-20 degrees), random position, scale and colour,
   lit from the top, filled with one of four surface patterns (``photo``), or drawn as an ink
   outline over a faint pattern (``sketch``);
5. maybe one clutter item in front (occlusion), then blur and sensor noise.

The object is upright and the light comes from above, so a rotation by 90/180/270 degrees is
detectable from the image: the watermark task has a real cue to find.
"""

from __future__ import annotations

import numpy as np

from shared.data.shapes import PATTERN_NAMES, SHAPE_NAMES, SHAPES, pattern_mask

DOMAINS = ("photo", "sketch")
SUPERSAMPLE = 2


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    s = size * SUPERSAMPLE
    c = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1
    x = np.broadcast_to(c[None, :], (s, s))
    y = np.broadcast_to(-c[:, None], (s, s))  # row 0 is the top: +y is up
    return x, y


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns (..., 3)."""
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _random_colors(rng: np.random.Generator, n: int, s: tuple[float, float] = (0.3, 1.0),
                   v: tuple[float, float] = (0.2, 1.0)) -> np.ndarray:
    return _hsv_to_rgb(rng.random(n), rng.uniform(*s, n), rng.uniform(*v, n)).astype(np.float32)


def _paint(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float | np.ndarray = 1.0) -> None:
    """canvas (n,S,S,3) <- color (n,3) or (n,S,S,3) where mask (n,S,S), in place."""
    a = mask[..., None].astype(np.float32) * (np.asarray(alpha, np.float32).reshape(-1, 1, 1, 1) if np.ndim(alpha) else alpha)
    col = color if color.ndim == 4 else color[:, None, None, :]
    canvas *= 1 - a
    canvas += a * col


def _smooth_field(rng: np.random.Generator, n: int, size: int, cells: np.ndarray) -> np.ndarray:
    """Low-frequency random field in [-1, 1]: bilinear upsampling of a cells x cells grid per image.

    ``cells`` is drawn per image, never per chunk: a chunk-level parameter would make the images of
    one chunk share a look, and a set made of few chunks (the victim's 500 private images are two)
    would differ from public data in every encoder, which breaks dataset inference's null.
    """
    cells = np.asarray(cells, dtype=np.int64).reshape(n)
    top = int(cells.max(initial=1))
    coarse = rng.uniform(-1, 1, (n, top + 1, top + 1)).astype(np.float32)
    out = np.empty((n, size, size), dtype=np.float32)
    for c in np.unique(cells):
        idx = np.flatnonzero(cells == c)
        g = coarse[idx, : c + 1, : c + 1]
        pos = np.linspace(0, c, size, dtype=np.float32)
        i0 = np.minimum(pos.astype(np.int64), c - 1)
        f = pos - i0
        rows = g[:, i0, :] * (1 - f)[None, :, None] + g[:, i0 + 1, :] * f[None, :, None]
        out[idx] = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    return out


def _background(rng: np.random.Generator, n: int, x: np.ndarray, y: np.ndarray, domain: str) -> np.ndarray:
    s = x.shape[0]
    top_lift = ((y + 1) / 2)[None, :, :, None]  # 1 at the top, 0 at the bottom
    if domain == "photo":
        low = _random_colors(rng, n, s=(0.2, 0.8), v=(0.15, 0.6))
        high = np.clip(low * rng.uniform(1.2, 1.9, (n, 1)) + rng.uniform(0.1, 0.3, (n, 1)), 0, 1)
        bg = low[:, None, None, :] + (high - low)[:, None, None, :] * top_lift
        tint = _random_colors(rng, n, s=(0.4, 1.0), v=(0.4, 1.0))
        blobs = _smooth_field(rng, n, s, rng.integers(2, 5, n))[..., None]
        bg = bg + 0.18 * blobs * (tint[:, None, None, :] - 0.5)
        for _ in range(2):  # gratings: texture at random frequency and orientation
            theta = rng.uniform(0, np.pi, (n, 1, 1))
            freq = rng.uniform(2.0, 9.0, (n, 1, 1))
            phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
            amp = rng.uniform(0.0, 0.09, (n, 1, 1))
            wave = np.sin(np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
            bg = bg + (amp * wave)[..., None]
    else:  # sketch: light paper with grain and hatching
        paper = 1 - _random_colors(rng, n, s=(0.0, 0.5), v=(0.05, 0.3))
        bg = paper[:, None, None, :] * (0.85 + 0.15 * top_lift)
        grain = rng.normal(0, 0.035, (n, s, s, 1)).astype(np.float32)
        theta = rng.choice([np.pi / 4, 3 * np.pi / 4], (n, 1, 1))
        freq = rng.uniform(8.0, 14.0, (n, 1, 1))
        hatch = (np.sin(np.pi * freq * (x * np.cos(theta) + y * np.sin(theta))) > 0.85).astype(np.float32)
        bg = bg + grain - 0.12 * hatch[..., None] * rng.uniform(0.3, 1.0, (n, 1, 1, 1))
    return bg.astype(np.float32)


def _clutter(rng: np.random.Generator, canvas: np.ndarray, x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> None:
    n = int(canvas.shape[0])
    for j in range(int(counts.max(initial=0))):
        active = counts > j
        kind = rng.integers(0, 3, n)
        cx, cy = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        r = rng.uniform(0.05, 0.16, n)
        ang = rng.uniform(0, np.pi, n)
        col = _random_colors(rng, n)
        dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
        disc = dx**2 + dy**2 < (r**2)[:, None, None]
        along = dx * np.cos(ang)[:, None, None] + dy * np.sin(ang)[:, None, None]
        across = -dx * np.sin(ang)[:, None, None] + dy * np.cos(ang)[:, None, None]
        bar = (np.abs(along) < 2.5 * r[:, None, None]) & (np.abs(across) < 0.035)
        square = (np.abs(along) < r[:, None, None]) & (np.abs(across) < r[:, None, None])
        m = np.where((kind == 0)[:, None, None], disc, np.where((kind == 1)[:, None, None], bar, square))
        _paint(canvas, m & active[:, None, None], col)


def _blur3(img: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Per-image 3x3 blur mixing each pixel with its 8 neighbours by ``strength`` in [0, 1]."""
    p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[1:3]
    box = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    k = strength.reshape(-1, 1, 1, 1).astype(np.float32)
    return img * (1 - k) + box * k


def render_chunk(rng: np.random.Generator, n: int, size: int, domain: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render ``n`` images of ``domain``; returns uint8 (n, size, size, 3) and labels."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
    x, y = _grid(size)
    shape = rng.integers(0, len(SHAPE_NAMES), n)
    pattern = rng.integers(0, len(PATTERN_NAMES), n)

    canvas = _background(rng, n, x, y, domain)
    _clutter(rng, canvas, x, y, rng.integers(1, 5, n))

    # Object pose: upright within +-20 degrees, so "up" stays meaningful.
    cx, cy = rng.uniform(-0.28, 0.28, n), rng.uniform(-0.28, 0.28, n)
    scale = rng.uniform(0.48, 0.72, n)
    theta = np.deg2rad(rng.uniform(-20, 20, n))
    aspect = rng.uniform(0.85, 1.15, n)

    def object_coords(ox: np.ndarray, oy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = x[None] - ox[:, None, None]
        dy = y[None] - oy[:, None, None]
        c, s_ = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        u = (c * dx + s_ * dy) / (scale * aspect)[:, None, None]
        v = (-s_ * dx + c * dy) / (scale / aspect)[:, None, None]
        return u.astype(np.float32), v.astype(np.float32)

    def shape_mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        m = np.zeros(u.shape, dtype=bool)
        for k, name in enumerate(SHAPE_NAMES):
            idx = np.flatnonzero(shape == k)
            if idx.size:
                m[idx] = SHAPES[name](u[idx], v[idx])
        return m

    u, v = object_coords(cx, cy)
    mask = shape_mask(u, v)
    period = rng.uniform(0.38, 0.55, n).astype(np.float32)[:, None, None]
    pat = np.zeros(mask.shape, dtype=bool)
    for k in range(len(PATTERN_NAMES)):
        idx = np.flatnonzero(pattern == k)
        if idx.size:
            pat[idx] = pattern_mask(k, u[idx], v[idx], period[idx])

    base = _random_colors(rng, n, s=(0.45, 1.0), v=(0.45, 1.0))
    # The secondary colour differs in lightness, so the pattern survives greyscale.
    second = _random_colors(rng, n, s=(0.3, 1.0), v=(0.1, 1.0))
    too_close = np.abs(_luma(second) - _luma(base)) < 0.3
    second[too_close] = np.clip(base[too_close] * 0.35, 0, 1)
    surface = np.where(pat[..., None], second[:, None, None, :], base[:, None, None, :])
    light = (1.0 + 0.22 * np.clip(v, -1, 1))[..., None]  # lit from above

    if domain == "photo":
        su, sv = object_coords(cx + 0.07, cy - 0.09)
        shadow = shape_mask(su, sv)
        _paint(canvas, shadow, np.zeros((n, 3), np.float32), alpha=0.45)
        _paint(canvas, mask, np.clip(surface * light, 0, 1))
    else:
        inner = shape_mask(u / 0.72, v / 0.72)
        ink = _random_colors(rng, n, s=(0.0, 0.9), v=(0.0, 0.35))
        _paint(canvas, mask & inner, np.clip(surface * light, 0, 1), alpha=0.4)
        _paint(canvas, mask & ~inner, ink)

    front = rng.random(n) < 0.3
    _clutter(rng, canvas, x, y, front.astype(np.int64))

    small = canvas.reshape(n, size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(2, 4))
    small = _blur3(small, rng.uniform(0, 0.6, n) * (rng.random(n) < 0.5))
    small = small + rng.normal(0, 1, small.shape).astype(np.float32) * rng.uniform(0, 0.04, (n, 1, 1, 1))
    images = np.clip(np.round(small * 255), 0, 255).astype(np.uint8)
    return images, {"shape": shape.astype(np.int64), "pattern": pattern.astype(np.int64)}
