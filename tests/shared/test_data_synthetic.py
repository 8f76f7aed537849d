import hashlib

import numpy as np
import pytest

from shared.data.render import render_chunk
from shared.data.synthetic import CHUNK, DataSpec, SplitSpec, generate_split, load_split, private_split_indices

SMALL = DataSpec(splits={
    "train": SplitSpec(domain="photo", size=300),
    "test": SplitSpec(domain="photo", size=260),
    "attack": SplitSpec(domain="photo", size=260),
    "shifted_train": SplitSpec(domain="sketch", size=260),
})


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_same_seed_same_pixels_and_labels():
    a, b = generate_split(SMALL, "train", progress=False), generate_split(SMALL, "train", progress=False)
    assert np.array_equal(a.images, b.images)
    for t in a.labels:
        assert np.array_equal(a.labels[t], b.labels[t])


def test_other_seed_other_pixels():
    a = generate_split(SMALL, "test", progress=False)
    b = generate_split(SMALL.model_copy(update={"seed": 1}), "test", progress=False)
    assert not np.array_equal(a.images, b.images)


def test_splits_are_disjoint_on_pixels():
    seen: dict[str, set[str]] = {}
    for split in SMALL.splits:
        h = _hashes(generate_split(SMALL, split, progress=False).images)
        assert len(h) == SMALL.splits[split].size  # no duplicates inside a split either
        for other, oh in seen.items():
            assert not (h & oh), f"{split} and {other} share images"
        seen[split] = h


def test_prefix_stable_across_sizes():
    big = generate_split(SMALL, "train", progress=False)
    small = generate_split(SMALL.model_copy(update={"splits": {"train": SplitSpec(domain="photo", size=CHUNK)}}), "train", progress=False)
    assert np.array_equal(big.images[:CHUNK], small.images)


def test_images_and_labels_are_well_formed():
    ds = generate_split(SMALL, "train", progress=False)
    assert ds.images.shape == (300, 32, 32, 3) and ds.images.dtype == np.uint8
    assert set(ds.tasks) == {"shape", "pattern"}
    assert len(ds.classes["shape"]) >= 10
    assert set(np.unique(ds.labels["shape"])) == set(range(len(ds.classes["shape"])))
    assert set(np.unique(ds.labels["pattern"])) == set(range(len(ds.classes["pattern"])))
    assert ds.images.std() > 20  # not blank: textured backgrounds and objects


def test_domains_differ_in_statistics():
    rng = np.random.default_rng(0)
    photo, _ = render_chunk(rng, 200, 32, "photo")
    sketch, _ = render_chunk(np.random.default_rng(0), 200, 32, "sketch")
    assert sketch.mean() - photo.mean() > 40  # light paper vs darker scenes


def test_orientation_cue_top_is_lighter():
    imgs, _ = render_chunk(np.random.default_rng(1), 250, 32, "photo")
    luma = imgs.astype(np.float32).mean(-1)
    assert luma[:, :8].mean() > luma[:, -8:].mean() + 5


def test_cache_round_trip(data_root):
    a = load_split(SMALL, "attack", root=data_root, progress=False)
    b = load_split(SMALL, "attack", root=data_root, progress=False)  # second time from the .npz
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.labels["shape"], b.labels["shape"])


def test_private_parts_disjoint_and_in_range():
    a, b = private_split_indices(SMALL, size=100)
    assert len(set(a) & set(b)) == 0 and a.max() < 300 and b.max() < 300
    with pytest.raises(ValueError, match="private parts"):
        private_split_indices(SMALL, size=200)
    # a victim trained on a prefix: both parts are members of that prefix
    a, b = private_split_indices(SMALL, size=50, pool=120)
    assert len(set(a) & set(b)) == 0 and max(a.max(), b.max()) < 120
    with pytest.raises(ValueError, match="private set has 120"):
        private_split_indices(SMALL, size=61, pool=120)


def test_unknown_domain_rejected():
    with pytest.raises(ValueError, match="unknown domain 'cartoon' for heist-shapes"):
        DataSpec(splits={"x": SplitSpec(domain="cartoon", size=10)})


class _DrawSpy:
    """A numpy Generator that records the size of every draw (position of ``size`` per method)."""

    SIZE_ARG = {"integers": 2, "uniform": 2, "normal": 2, "random": 0, "choice": 1}

    def __init__(self, rng: np.random.Generator):
        self._rng, self.sizes = rng, []

    def __getattr__(self, name):
        method = getattr(self._rng, name)
        if name not in self.SIZE_ARG:
            raise AssertionError(f"render_chunk drew with rng.{name}, which the spy does not know")

        def draw(*args, **kwargs):
            pos = self.SIZE_ARG[name]
            size = kwargs.get("size", args[pos] if len(args) > pos else None)
            self.sizes.append((name, size))
            return method(*args, **kwargs)
        return draw


@pytest.mark.parametrize("domain", ["photo", "sketch"])
def test_every_random_parameter_is_drawn_per_image(domain):
    """No chunk-level parameter: a set made of few chunks (the victim's 500 private images are two)
    must be exchangeable with public data, or dataset inference sees a shift in every encoder.
    Data v1 drew the blob field's frequency once per chunk; this test failed on it."""
    n = 40
    spy = _DrawSpy(np.random.default_rng(3))
    render_chunk(spy, n, 32, domain)
    shared = [(name, size) for name, size in spy.sizes if size is None or np.atleast_1d(size)[0] != n]
    assert spy.sizes and not shared, f"draws shared by the whole chunk: {shared}"
