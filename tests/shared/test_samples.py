"""shared/data/samples.py: foolbox's bundled sample photos, listed from their file names and loaded."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from shared.data import samples
from shared.data.base import DatasetMissingError
from shared.data.samples import SAMPLE_DATASETS, load_samples, sample_photos, samples_dir


@pytest.fixture
def installed() -> None:
    try:
        samples_dir()
    except DatasetMissingError as e:
        pytest.skip(str(e))


def test_every_dataset_listed_with_index_and_label(installed):
    photos = sample_photos()
    assert [p.dataset for p in photos] == [d for d in SAMPLE_DATASETS for _ in range(20)]
    for ds in SAMPLE_DATASETS:
        assert [p.index for p in sample_photos(ds)] == list(range(20))
    first = sample_photos("cifar10")[0]
    assert (first.name, first.index, first.label) == ("cifar10_00_3.png", 0, 3)
    fm = sample_photos("fashion_mnist")[0]
    assert fm.name.startswith("fashionMNIST_00_") and fm.label == int(fm.name.split("_")[2].split(".")[0])
    assert all(p.label in range(1000) for p in sample_photos("imagenet"))


def test_read_bytes_is_the_file(installed):
    png, jpg = sample_photos("mnist")[0], sample_photos("imagenet")[0]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.read_bytes() == png.path.read_bytes()
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"


def test_load_samples_as_image_set(installed):
    cifar = load_samples("cifar10", 32)  # already 32 x 32: the file's pixels
    assert cifar.images.shape == (20, 32, 32, 3) and cifar.name == "samples-cifar10"
    first = sample_photos("cifar10")[0]
    np.testing.assert_array_equal(cifar.images[0], np.asarray(Image.open(first.path).convert("RGB")))
    assert cifar.labels["class"][0] == 3 and cifar.classes["class"][3] == "cat"
    mnist = load_samples("mnist", 32)  # 28 px greyscale, upscaled; grey in all three channels
    assert mnist.images.shape == (20, 32, 32, 3)
    assert (mnist.images[..., 0] == mnist.images[..., 2]).all() and mnist.images.max() > 200
    assert list(mnist.labels["class"][:4]) == [7, 2, 1, 0]
    imagenet = load_samples("imagenet", 64)
    assert imagenet.images.shape == (20, 64, 64, 3) and imagenet.classes == {}


def test_unknown_dataset():
    with pytest.raises(ValueError, match="one of cifar10, cifar100"):
        sample_photos("svhn")


def test_missing_foolbox_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name, *a: None if name == "foolbox" else real(name, *a))
    with pytest.raises(DatasetMissingError, match=r"foolbox, which is not installed: .*uv sync --extra data"):
        sample_photos()


def test_other_root(tmp_path):
    for name in ("cifar10_01_8.png", "fashionMNIST_00_9.png", "imagenet_00_243.jpg", "README.txt", "cifar10_x_1.png"):
        (tmp_path / name).write_bytes(b"")
    assert [(p.dataset, p.index, p.label) for p in sample_photos(root=tmp_path)] == [
        ("cifar10", 1, 8), ("fashion_mnist", 0, 9), ("imagenet", 0, 243)]
    with pytest.raises(DatasetMissingError, match="no sample photos of mnist"):
        sample_photos("mnist", root=tmp_path)
    with pytest.raises(DatasetMissingError, match="no sample photos of any dataset"):
        sample_photos(root=tmp_path / "absent")
