"""Unit tests of each defence's math (pure functions; the store they commit to: tests/server/test_store.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.defences.b4b import (
    CoverageTracker,
    bitmap_to_bits,
    bucket_offsets,
    coverage_of_bits,
    sigma_of_coverage,
    simhash_buckets,
    simhash_planes,
)
from server.defences.index import VectorIndex, is_hit, pairwise_scores
from server.defences.keyed import image_digests, keyed_normal
from server.defences.perturb import round_to, top_k
from server.defences.pow import calibrated_bits
from server.defences.profile import LegitProfile

RNG = np.random.default_rng(0)


def test_keyed_noise_same_account_same_image_same_draw():
    imgs = RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    d = image_digests(imgs)
    a = keyed_normal(b"k", "noise", "acct1", d, 16, mean=10, sigma=1)
    assert np.array_equal(a, keyed_normal(b"k", "noise", "acct1", d, 16, mean=10, sigma=1))
    assert not np.allclose(a, keyed_normal(b"k", "noise", "acct2", d, 16, mean=10, sigma=1))
    assert not np.allclose(a[0], a[1])  # different images, different draws
    big = keyed_normal(b"k", "noise", "a", [str(i) for i in range(400)], 50, mean=10, sigma=2)
    assert abs(big.mean() - 10) < 0.05 and abs(big.std() - 2) < 0.05


def test_rounding_and_topk():
    y = np.array([[0.123, -0.987, 0.5, 0.01]], np.float32)
    assert np.allclose(round_to(y, decimals=1), [[0.1, -1.0, 0.5, 0.0]])
    assert np.allclose(round_to(y, step=0.25), [[0.0, -1.0, 0.5, 0.0]])
    assert np.allclose(top_k(y, 2), [[0, -0.987, 0.5, 0]])
    assert np.allclose(top_k(y, 2, by="value"), [[0.123, 0, 0.5, 0]])
    assert np.array_equal(top_k(y, 9), y)


def test_b4b_sigma_matches_the_cost_function():
    assert sigma_of_coverage(0.0) == 0.0
    assert math.isclose(sigma_of_coverage(0.8), 1.0 - 1e-7, rel_tol=1e-9)  # alpha at c = beta
    assert sigma_of_coverage(0.5) < 0.005  # nearly zero below 50 %
    c = np.linspace(0, 1, 11)
    s = sigma_of_coverage(c)
    assert np.all(np.diff(s) > 0)
    assert math.isclose(sigma_of_coverage(0.4, alpha=2, beta=0.4, lam=1e-3), 2 - 1e-3)


def test_simhash_coverage_counts_buckets():
    planes = simhash_planes(b"k", 8, hyperplanes=3, hash_sets=2)
    assert planes.shape == (8, 6)
    y = RNG.normal(size=(500, 8)).astype(np.float32)
    b = simhash_buckets(y, planes, 3)
    assert b.shape == (500, 2) and b.min() >= 0 and b.max() < 8
    manual = ((y @ planes[:, :3]) > 0).astype(int) @ np.array([1, 2, 4])
    assert np.array_equal(b[:, 0], manual)
    tr = CoverageTracker(planes, 3, 2)
    assert tr.add(y[:1]) == pytest.approx(1 / 8)  # one bucket of 8 in each set
    assert tr.add(y) == pytest.approx(1.0)  # 500 Gaussian points hit all 8 octant-ish buckets
    offs = bucket_offsets(b[:1], 3)
    assert list(offs) == sorted([b[0, 0], 8 + b[0, 1]])
    # Redis SETBIT order: bit 0 is the MSB of byte 0
    bm = bytearray(2)
    bm[0] |= 0x80 >> 3
    bm[1] |= 0x80 >> 1  # bit 9
    bits = bitmap_to_bits(bytes(bm), 16)
    assert list(np.flatnonzero(bits)) == [3, 9] and coverage_of_bits(bits, 3, 2) == pytest.approx(1 / 8)


def test_diverse_stream_covers_more_than_a_narrow_one():
    planes = simhash_planes(b"k", 16, 6, 5)
    wide = RNG.normal(size=(300, 16))
    narrow = RNG.normal(size=16) + 0.05 * RNG.normal(size=(300, 16))
    assert CoverageTracker(planes, 6, 5).add(wide) > 3 * CoverageTracker(planes, 6, 5).add(narrow)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_vector_index_flat_ivf_and_trim(metric):
    x = RNG.normal(size=(3000, 16)).astype(np.float32)
    idx = VectorIndex(16, metric, maxlen=2000, switch_at=1000)
    idx.add(x[:500])
    assert idx.kind == "flat"
    s, pos = idx.search(x[:5] + 1e-3, 1)
    assert list(pos[:, 0]) == [0, 1, 2, 3, 4] and is_hit(s[:, 0], metric, 0.99 if metric == "cosine" else 0.01).all()
    idx.add(x[500:1500])
    assert idx.kind == "ivf" and len(idx) == 1500
    s, pos = idx.search(x[1000:1010], 1)
    assert (pos[:, 0] == np.arange(1000, 1010)).mean() >= 0.9  # IVF finds exact duplicates
    idx.add(x[1500:])  # 3000 > maxlen + slack: keeps the newest 2000
    assert len(idx) == 2000
    s, pos = idx.search(x[:1], 1)
    assert not is_hit(s[:, 0], metric, 0.999 if metric == "cosine" else 1e-4).any()  # the oldest are gone
    ps = pairwise_scores(x[:3], metric)
    assert ps.shape == (3, 3) and np.allclose(np.diag(ps), 1.0 if metric == "cosine" else 0.0, atol=1e-3)
    empty = VectorIndex(4, metric)
    assert empty.search(np.ones((2, 4)), 1)[1].tolist() == [[-1], [-1]]


def test_pow_calibration_zero_inside_profile_and_grows_outside():
    prof = LegitProfile(images=[100, 1000], coverage=[0.05, 0.2], similar_rate=0.1, volume=1000)
    assert prof.expected_coverage(550) == pytest.approx(0.125) and prof.expected_coverage(5000) == pytest.approx(0.2)
    assert calibrated_bits(prof, 500, 0.1, 10)[0] == 0  # within the profile: free
    assert calibrated_bits(prof, 0, 0.0, 0) == (0, 0.0)
    knobs = {"coverage_slack": 0, "slope": 0.5, "min_bits": 16, "max_bits": 26}
    b1, d1 = calibrated_bits(prof, 2000, 0.30, 10, **knobs)
    b2, d2 = calibrated_bits(prof, 4000, 0.45, 10, **knobs)
    assert 16 <= b1 < b2 <= 26 and d2 > d1 > 0
    assert d1 == pytest.approx(10 + 1.0)  # 10 points of coverage + 1 doubling of volume
    assert calibrated_bits(prof, 500, 0.1, 300)[1] == pytest.approx(50)  # 60 % similar vs 10 %
    assert calibrated_bits(prof, 10 ** 6, 1.0, 10 ** 6, max_bits=30)[0] == 30
