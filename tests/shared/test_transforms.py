import numpy as np
import pytest

from shared.transforms import compose, keyed_rng, make_transform


def test_keyed_rng_is_keyed():
    a = keyed_rng(b"k", "acct1").normal(size=4)
    assert np.array_equal(a, keyed_rng(b"k", "acct1").normal(size=4))
    assert not np.array_equal(a, keyed_rng(b"k", "acct2").normal(size=4))
    assert not np.array_equal(a, keyed_rng(b"j", "acct1").normal(size=4))


def test_permute_is_a_permutation():
    y = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    t = make_transform("permute", 8, keyed_rng(b"k", "a"))
    out = t.apply(y)
    assert np.allclose(np.sort(out, 1), np.sort(y, 1)) and not np.allclose(out, y)


def test_pad_shuffle_keyed_by_input_and_deterministic():
    y = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    t = make_transform("pad_shuffle", 8, keyed_rng(b"k", "a"), pad=4)
    a, b = t.apply(y, ["x", "y", "z"]), t.apply(y, ["x", "y", "z"])
    assert a.shape == (3, 12) and np.array_equal(a, b)
    assert not np.array_equal(a, t.apply(y, ["x", "y", "w"]))
    with pytest.raises(ValueError):
        t.apply(y)


def test_affine_is_invertible_by_least_squares():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 16)).astype(np.float32)
    t = make_transform("affine", 16, keyed_rng(b"k", "a"))
    out = t.apply(y)
    x1 = np.concatenate([out, np.ones((200, 1), np.float32)], 1)
    w, *_ = np.linalg.lstsq(x1, y, rcond=None)
    assert np.allclose(x1 @ w, y, atol=1e-3)


def test_compose_and_bad_input():
    y = np.ones((2, 4), np.float32)
    ts = [make_transform("affine", 4, keyed_rng(b"k", "1")), make_transform("permute", 4, keyed_rng(b"k", "2"))]
    assert compose(ts, y).shape == (2, 4)
    with pytest.raises(ValueError):
        ts[0].apply(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError):
        make_transform("rotate", 4, keyed_rng(b"k"))


def test_binary_and_other_transforms_keyed():
    y = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    t = make_transform("binary", 8, keyed_rng(b"k", "a"), pad=4)
    out = t.apply(y)
    assert out.shape == (20, 12) and set(np.unique(out)) <= {-1.0, 1.0} and t.out_dim == 12
    assert np.array_equal(out, make_transform("binary", 8, keyed_rng(b"k", "a"), pad=4).apply(y))
    assert not np.array_equal(out, make_transform("binary", 8, keyed_rng(b"k", "b"), pad=4).apply(y))
