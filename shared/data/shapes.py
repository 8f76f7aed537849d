"""Shape masks for the procedural dataset, in object coordinates.

Every shape lives in [-1, 1]^2 with +v pointing *up*, and none is symmetric under a 180 degree
turn, so an upright object tells which way is up (the rotation watermark relies on that).
Each mask function maps coordinate arrays (u, v) of any shape to a boolean array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def polygon(vertices: list[tuple[float, float]]) -> Mask:
    """Even-odd point-in-polygon test, vectorised over the points, looped over the edges."""
    vs = np.asarray(vertices, dtype=np.float32)

    def mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        inside = np.zeros(u.shape, dtype=bool)
        for (x0, y0), (x1, y1) in zip(vs, np.roll(vs, -1, axis=0), strict=True):
            if y0 == y1:
                continue
            crosses = (y0 > v) != (y1 > v)
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
            inside ^= crosses & (u < x_at)
        return inside

    return mask


def _star(points: int = 5, outer: float = 0.95, inner: float = 0.42) -> Mask:
    verts = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = np.pi / 2 + i * np.pi / points  # first point straight up
        verts.append((r * np.cos(a), r * np.sin(a) - 0.08))
    return polygon(verts)


def _dome(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u**2 + (v + 0.45) ** 2 < 0.95**2) & (v > -0.45)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.25, v * 1.25 - 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0


def _mushroom(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cap = ((u / 0.95) ** 2 + ((v - 0.05) / 0.8) ** 2 < 1) & (v > 0.05)
    stem = (np.abs(u) < 0.24) & (v > -0.9) & (v <= 0.05)
    return cap | stem


SHAPES: dict[str, Mask] = {
    "triangle": polygon([(0.0, 0.9), (-0.88, -0.75), (0.88, -0.75)]),
    "arrow": polygon(
        [(0.0, 0.95), (-0.8, 0.1), (-0.26, 0.1), (-0.26, -0.9), (0.26, -0.9), (0.26, 0.1), (0.8, 0.1)]
    ),
    "house": polygon(
        [(0.0, 0.9), (-0.85, 0.12), (-0.6, 0.12), (-0.6, -0.85), (0.6, -0.85), (0.6, 0.12), (0.85, 0.12)]
    ),
    "tee": polygon(
        [(-0.88, 0.85), (0.88, 0.85), (0.88, 0.42), (0.24, 0.42), (0.24, -0.88), (-0.24, -0.88), (-0.24, 0.42), (-0.88, 0.42)]
    ),
    "ell": polygon([(-0.7, 0.9), (-0.25, 0.9), (-0.25, -0.42), (0.78, -0.42), (0.78, -0.88), (-0.7, -0.88)]),
    "dome": _dome,
    "heart": _heart,
    "mushroom": _mushroom,
    "cross": polygon(
        [(-0.2, 0.92), (0.2, 0.92), (0.2, 0.62), (0.72, 0.62), (0.72, 0.26), (0.2, 0.26), (0.2, -0.92), (-0.2, -0.92), (-0.2, 0.26), (-0.72, 0.26), (-0.72, 0.62), (-0.2, 0.62)]
    ),
    "star": _star(),
}
SHAPE_NAMES: list[str] = list(SHAPES)

# Surface patterns (the second downstream task), functions of object coordinates and a period.
PATTERN_NAMES: list[str] = ["solid", "stripes", "dots", "checker"]


def pattern_mask(kind: int, u: np.ndarray, v: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Where the secondary colour shows for pattern ``kind``; ``period`` broadcasts against u."""
    if kind == 0:
        return np.zeros(u.shape, dtype=bool)
    a, b = u / period, v / period
    if kind == 1:
        return (b - np.floor(b)) < 0.5
    if kind == 2:
        return ((a - np.floor(a) - 0.5) ** 2 + (b - np.floor(b) - 0.5) ** 2) < 0.3**2
    if kind == 3:
        return ((np.floor(a) + np.floor(b)) % 2) == 0
    raise ValueError(f"unknown pattern {kind}")
