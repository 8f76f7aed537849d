"""Tests for shared/data/real.py on tiny fixture files written in the real on-disk formats.

Each fixture holds a handful of images with a known pixel pattern; they are loaded
with ``load_real`` and compared with what was written. Where the project's own reader replaces
torchvision's (CIFAR, SVHN, STL10), the same files are also read by torchvision with
its MD5 check switched off, to show that both agree on the layout.
"""

from __future__ import annotations

import codecs
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from shared.data.base import DatasetMissingError, ImageSet
from shared.data.real import REAL_DATASETS, UnsafePickleError, expected_files, load_real

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _images(n: int, size: int, seed: int, channels: int = 3) -> np.ndarray:
    """A known, distinct pixel pattern: (n, size, size, channels) or (n, size, size) for 1."""
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------
# Fixture writers (the exact formats of the official files)
# ---------------------------------------------------------------------------


def _dump(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_pickle(obj: object) -> bytes:
    """The body of a protocol-2 pickle as Python 2 wrote the official CIFAR files.

    Python 2 str is a byte string (SHORT_BINSTRING/BINSTRING opcodes; it loads as str with
    encoding="latin1", as bytes with encoding="bytes") and numpy arrays refer to
    ``numpy.core.multiarray._reconstruct`` with the raw data as such a byte string.
    Python 3's pickle cannot write these opcodes, so they are written here by hand.
    """
    if isinstance(obj, str):
        return _py2_str(obj.encode("latin1"))
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(map(_py2_pickle, obj)) + b"e" if obj else b"")
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_py2_pickle, obj)) + b"t"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_pickle(k) + _py2_pickle(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        dtype = (
            b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
            + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n(K\x00t" + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + _py2_pickle(tuple(obj.shape)) + dtype + b"\x89" + _py2_str(obj.tobytes()) + b"tb"
        )
    raise TypeError(type(obj))


def _to_bytes(obj: object) -> object:
    """str -> bytes in dict keys and lists, as a Python 3 re-dump of ``load(encoding='bytes')`` has them."""
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, dict):
        return {_to_bytes(k): _to_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_bytes(v) for v in obj]
    return obj


def write_pickle(path: Path, obj: dict, fmt: str = "py2") -> None:
    """Write ``obj`` as the original Python 2 files are ("py2") or re-dumped by Python 3
    with bytes keys and pickle protocol N ("py3-N")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "py2":
        path.write_bytes(b"\x80\x02" + _py2_pickle(obj) + b".")
    else:
        path.write_bytes(pickle.dumps(_to_bytes(obj), protocol=int(fmt.split("-")[1])))


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the R plane, then G, then B, row by row."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 4, fmt: str = "py2") -> dict[str, tuple]:
    """CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    out = {}
    train_x, train_y = [], []
    for i in range(1, 6):
        x = _images(per_batch, 32, seed=i)
        y = [(i * 3 + j) % 10 for j in range(per_batch)]
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": y,
            "data": _cifar_rows(x),
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
        write_pickle(folder / f"data_batch_{i}", batch, fmt)
        train_x.append(x)
        train_y += y
    out["train"] = (np.concatenate(train_x), np.array(train_y))
    x = _images(n_test, 32, seed=99)
    y = [j % 10 for j in range(n_test)]
    write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y, "data": _cifar_rows(x)}, fmt)
    out["test"] = (x, np.array(y))
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}, fmt)
    return out


def write_cifar100(root: Path, n: int = 6, fmt: str = "py2") -> dict[str, tuple]:
    """CIFAR-100 python version: train, test (fine and coarse labels), meta."""
    folder = root / "cifar-100-python"
    out = {}
    for split, seed in (("train", 10), ("test", 11)):
        x = _images(n, 32, seed=seed)
        fine = [(seed * 7 + 13 * j) % 100 for j in range(n)]
        coarse = [f % 20 for f in fine]
        batch = {"filenames": ["a.png"] * n, "batch_label": split, "fine_labels": fine, "coarse_labels": coarse, "data": _cifar_rows(x)}
        write_pickle(folder / split, batch, fmt)
        out[split] = (x, np.array(fine))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    write_pickle(folder / "meta", meta, fmt)
    return out


def write_svhn(root: Path, split: str, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """SVHN Format 2: X is (32, 32, 3, N) uint8, y is (N, 1) with 10 standing for digit 0."""
    x = _images(n, 32, seed=20 + len(split))
    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
    return x, digits


def _stl10_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) -> STL10 bytes: per image 3 planes, each stored column-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(root: Path, n_train: int = 5, n_test: int = 4, n_unlabeled: int = 6) -> dict[str, tuple]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 30), ("test", n_test, 31)):
        x = _images(n, 96, seed=seed)
        y = (np.arange(n) * 3) % 10  # 0-based
        (folder / f"{split}_X.bin").write_bytes(_stl10_bytes(x))
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y)
    x = _images(n_unlabeled, 96, seed=32)
    (folder / "unlabeled_X.bin").write_bytes(_stl10_bytes(x))
    out["unlabeled"] = (x, np.full(n_unlabeled, -1))
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    (folder / "fold_indices.txt").write_text("\n".join(" ".join(str(i) for i in range(k % n_train + 1)) for k in range(10)) + "\n")
    return out


def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path, n_train: int = 8, n_test: int = 5) -> dict[str, tuple]:
    """Uncompressed IDX files: images magic 2051 (N, 28, 28), labels magic 2049 (N,)."""
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n, seed in (("train", "train", n_train, 40), ("t10k", "test", n_test, 41)):
        x = _images(n, 28, seed=seed, channels=1)
        y = (np.arange(n) * 7) % 10
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(2051, x))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(2049, y))
        out[split] = (x, y)
    return out


def _check(ds: ImageSet, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.shape == images.shape
    assert ds.tasks == ["class"]
    assert ds.labels["class"].dtype == np.int64
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels["class"], labels)
    assert ds.classes["class"] == classes


# ---------------------------------------------------------------------------
# Round trips at native size
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["py2", "py3-2", "py3-5"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_round_trip(tmp_path: Path, split: str, fmt: str) -> None:
    written = write_cifar10(tmp_path, fmt=fmt)
    ds = load_real("cifar10", tmp_path, split=split, size=32)
    _check(ds, *written[split], CIFAR10_NAMES)
    assert ds.name == f"cifar10-{split}"
    assert len(ds) == (10 if split == "train" else 4)


def test_cifar10_pixel_layout(tmp_path: Path) -> None:
    """Byte k of the R plane is pixel (k // 32, k % 32); G and B planes follow."""
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0] = 255  # R of top-left pixel
    row[0, 1024 + 31] = 128  # G of top-right pixel
    row[0, 2048 + 32] = 64  # B of pixel (1, 0)
    write_pickle(folder / "test_batch", {"labels": [3], "data": row})
    img = load_real("cifar10", tmp_path, split="test").images[0]
    assert tuple(img[0, 0]) == (255, 0, 0)
    assert tuple(img[0, 31]) == (0, 128, 0)
    assert tuple(img[1, 0]) == (0, 0, 64)
    assert int(img.sum()) == 255 + 128 + 64


@pytest.mark.parametrize("fmt", ["py2", "py3-2"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_round_trip(tmp_path: Path, split: str, fmt: str) -> None:
    written = write_cifar100(tmp_path, fmt=fmt)
    ds = load_real("cifar100", tmp_path, split=split)
    _check(ds, *written[split], [f"fine{i}" for i in range(100)])


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_round_trip_and_digit_zero(tmp_path: Path, split: str) -> None:
    x, digits = write_svhn(tmp_path, split)
    ds = load_real("svhn", tmp_path, split=split)
    _check(ds, x, digits, [str(d) for d in range(10)])
    assert ds.labels["class"][0] == 0  # stored as 10 in the file


@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_stl10_round_trip(tmp_path: Path, split: str) -> None:
    written = write_stl10(tmp_path)
    ds = load_real("stl10", tmp_path, split=split, size=96)
    _check(ds, *written[split], STL10_NAMES)


def test_stl10_pixel_layout(tmp_path: Path) -> None:
    """STL10 planes are column-major: byte k of the R plane is pixel (k % 96, k // 96)."""
    write_stl10(tmp_path)
    raw = np.zeros(3 * 96 * 96, np.uint8)
    raw[1] = 200  # R, column 0, row 1
    raw[96 * 96 + 96] = 100  # G, column 1, row 0
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(raw.tobytes())
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([10]))
    ds = load_real("stl10", tmp_path, split="test", size=96)
    img = ds.images[0]
    assert tuple(img[1, 0]) == (200, 0, 0)
    assert tuple(img[0, 1]) == (0, 100, 0)
    assert ds.labels["class"].tolist() == [9]


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_round_trip(tmp_path: Path, split: str) -> None:
    x, y = write_fashion_mnist(tmp_path)[split]
    ds = load_real("fashion_mnist", tmp_path, split=split, size=28)
    rgb = np.repeat(x[..., None], 3, axis=-1)
    _check(ds, rgb, y, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])


# ---------------------------------------------------------------------------
# Resizing and limit
# ---------------------------------------------------------------------------


def test_stl10_resized_to_32(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    flat = np.stack([np.full((96, 96, 3), c, np.uint8) for c in [(200, 17, 3), (0, 255, 90)]])
    (folder / "train_X.bin").write_bytes(_stl10_bytes(flat))
    (folder / "train_y.bin").write_bytes(bytes([1, 2]))
    ds = load_real("stl10", tmp_path, split="train", size=32)
    assert ds.images.shape == (2, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images, flat[:, :32, :32])  # flat colours survive resizing


def test_fashion_mnist_gray_to_rgb_32(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    flat = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 77, 255)])
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx(2051, flat))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx(2049, np.array([1, 2, 3])))
    ds = load_real("fashion_mnist", tmp_path, split="test")  # default size 32
    assert ds.images.shape == (3, 32, 32, 3)
    for img, v in zip(ds.images, (0, 77, 255), strict=False):
        assert (img == v).all()
    assert ds.labels["class"].tolist() == [1, 2, 3]


def test_limit_keeps_first_examples(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    ds = load_real("cifar10", tmp_path, split="train", limit=3)
    x, y = written["train"]
    _check(ds, x[:3], y[:3], CIFAR10_NAMES)
    assert load_real("cifar10", tmp_path, split="train", limit=0).images.shape == (0, 32, 32, 3)

    stl = write_stl10(tmp_path)
    ds = load_real("stl10", tmp_path, split="unlabeled", size=96, limit=2)
    _check(ds, stl["unlabeled"][0][:2], np.array([-1, -1]), STL10_NAMES)
    assert len(load_real("stl10", tmp_path, split="train", size=16, limit=100)) == 5


# ---------------------------------------------------------------------------
# Agreement with torchvision's own readers (MD5 check switched off)
# ---------------------------------------------------------------------------


def test_own_readers_agree_with_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets import cifar, stl10, svhn

    for module in (cifar, stl10, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *a, **k: True)

    write_cifar10(tmp_path)
    tv = tvd.CIFAR10(str(tmp_path), train=True, download=False)
    ours = load_real("cifar10", tmp_path, split="train")
    np.testing.assert_array_equal(ours.images, tv.data)
    assert ours.labels["class"].tolist() == tv.targets and ours.classes["class"] == tv.classes

    write_cifar100(tmp_path)
    tv = tvd.CIFAR100(str(tmp_path), train=False, download=False)
    ours = load_real("cifar100", tmp_path, split="test")
    np.testing.assert_array_equal(ours.images, tv.data)
    assert ours.labels["class"].tolist() == tv.targets and ours.classes["class"] == tv.classes

    write_svhn(tmp_path, "test")
    tv = tvd.SVHN(str(tmp_path), split="test", download=False)
    ours = load_real("svhn", tmp_path, split="test")
    np.testing.assert_array_equal(ours.images, tv.data.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ours.labels["class"], tv.labels)

    write_stl10(tmp_path)
    for split in ("train", "unlabeled"):
        tv = tvd.STL10(str(tmp_path), split=split, download=False)
        ours = load_real("stl10", tmp_path, split=split, size=96)
        np.testing.assert_array_equal(ours.images, tv.data.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(ours.labels["class"], tv.labels)
        assert ours.classes["class"] == tv.classes


# ---------------------------------------------------------------------------
# Missing files, bad arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_missing_folder_names_every_file(tmp_path: Path, name: str) -> None:
    root = tmp_path / "no_such_dir"
    with pytest.raises(DatasetMissingError) as info:
        load_real(name, root, split="test")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert name in msg and str(root.absolute()) in msg
    for path in expected_files(name, root, "test"):
        assert str(path.absolute()) in msg
    assert "download" in msg  # the hint on how to get them


def test_missing_single_file_is_the_only_one_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetMissingError, match="data_batch_3") as info:
        load_real("cifar10", tmp_path, split="train")
    assert "data_batch_1" not in str(info.value).split("missing:")[1].split("This project")[0]
    load_real("cifar10", tmp_path, split="test")  # the test split does not need it


def test_expected_files_layouts(tmp_path: Path) -> None:
    def rel(name, split):
        return [p.relative_to(tmp_path).as_posix() for p in expected_files(name, tmp_path, split)]
    assert rel("cifar10", "train") == [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/batches.meta"]
    assert rel("cifar10", "test") == ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]
    assert rel("cifar100", "train") == ["cifar-100-python/train", "cifar-100-python/meta"]
    assert rel("svhn", "extra") == ["extra_32x32.mat"]
    assert rel("stl10", "unlabeled") == ["stl10_binary/unlabeled_X.bin", "stl10_binary/class_names.txt"]
    assert rel("stl10", "test") == ["stl10_binary/test_X.bin", "stl10_binary/test_y.bin", "stl10_binary/class_names.txt"]
    fm = rel("fashion_mnist", "train")
    assert fm == rel("fashion_mnist", "test") and len(fm) == 4
    assert "FashionMNIST/raw/t10k-images-idx3-ubyte" in fm


def test_unknown_name_and_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10.*fashion_mnist"):
        load_real("imagenet", tmp_path)
    with pytest.raises(ValueError, match="train, test, unlabeled"):
        load_real("stl10", tmp_path, split="extra")
    with pytest.raises(ValueError, match="train, test, extra"):
        expected_files("svhn", tmp_path, "unlabeled")
    with pytest.raises(ValueError):
        load_real("cifar10", tmp_path, split="valid")
    with pytest.raises(ValueError):
        load_real("cifar10", tmp_path, limit=-1)
    with pytest.raises(ValueError):
        load_real("cifar10", tmp_path, size=0)


# ---------------------------------------------------------------------------
# No code execution from pickles
# ---------------------------------------------------------------------------


class _Evil:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("target", ["test_batch", "batches.meta"])
@pytest.mark.parametrize("how", ["os.system", "eval", "nested", "codecs"])
def test_malicious_cifar_pickle_is_refused(tmp_path: Path, protocol: int, target: str, how: str) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _Evil(os.system, f"touch {marker}")
    elif how == "eval":
        payload = _Evil(eval, f"open({str(marker)!r}, 'w').close()")
    elif how == "nested":  # hidden inside a list inside the data dict
        payload = [1, 2, _Evil(os.system, f"touch {marker}")]
    else:  # an allowed global (used for bytes in protocol 2) called with other arguments
        payload = _Evil(codecs.encode, "abc", "rot13")
    _dump(tmp_path / "cifar-10-batches-py" / target, {b"labels": [0], b"data": payload, b"label_names": payload}, protocol)
    with pytest.raises(UnsafePickleError, match="refused") as info:
        load_real("cifar10", tmp_path, split="test")
    assert target in str(info.value)
    assert not marker.exists()


def test_corrupt_cifar_batch_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:50])
    with pytest.raises(ValueError, match="test_batch"):
        load_real("cifar10", tmp_path, split="test")
    write_pickle(batch, {"labels": [0], "data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(ValueError, match="3072"):
        load_real("cifar10", tmp_path, split="test")
