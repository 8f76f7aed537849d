"""Query-side tools: the linear map between sybil accounts' answers, near-duplicate filtering."""

from __future__ import annotations

import numpy as np

from attacker.queries import apply_map, drop_similar, fit_linear_map


def test_linear_mapper_recovers_affine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    a, b = rng.normal(size=(6, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    w, err = fit_linear_map(x @ a + b, x)
    assert err < 1e-3
    np.testing.assert_allclose(apply_map(w, x[:5] @ a + b), x[:5], atol=1e-3)


def test_drop_similar_removes_near_copies():
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(imgs[:3].astype(int) + rng.integers(-3, 4, imgs[:3].shape), 0, 255).astype(np.uint8)
    keep = drop_similar(np.concatenate([imgs, noisy]))
    assert keep.tolist() == list(range(10))
