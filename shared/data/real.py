"""Loaders for real image datasets that are already on local disk.

Nothing here ever touches the network: the files must have been obtained beforehand
and laid out the way torchvision lays them out (see ``expected_files``). Every loader
returns an ``ImageSet`` of uint8 RGB images of shape (N, size, size, 3) with a single
label task, ``"class"``.

Which reader is used, per dataset (torchvision 0.28):

* ``fashion_mnist``: ``torchvision.datasets.FashionMNIST(download=False)``. Its
  existence check only tests that the four uncompressed IDX files are there (no MD5),
  so it accepts any well-formed IDX files.
* ``svhn``, ``stl10``: own readers. torchvision's classes MD5-check the files even with
  ``download=False`` (STL10 even checks the files of the *other* splits), so they refuse
  anything but the exact official files. The formats are simple: SVHN is a MATLAB v5
  ``.mat`` read with ``scipy.io.loadmat``; STL10 is raw uint8 bytes read with
  ``numpy.fromfile`` (which also lets ``limit`` read only what it needs).
* ``cifar10``, ``cifar100``: own reader. Besides the MD5 checks, torchvision calls plain
  ``pickle.load`` on the batch files, which runs arbitrary code from a crafted file. The
  project rule is "no pickle from untrusted files", so the batches are read with
  ``_RestrictedUnpickler``, which resolves only the handful of globals that plain data
  (dicts, lists, str, bytes, ints, numpy arrays) needs and refuses everything else.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from shared.data.base import DatasetMissingError, ImageSet

REAL_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "stl10", "fashion_mnist")

TASK = "class"
SVHN_CLASSES: list[str] = [str(d) for d in range(10)]
STL10_SIZE = 96
CIFAR_SIZE = 32


# ---------------------------------------------------------------------------
# Where the files are
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where one dataset's files lie under ``root`` and how to get them."""

    folder: str  # sub-folder of root that holds the files ("" = root itself)
    files: Mapping[str, tuple[str, ...]]  # split -> file names inside ``folder``
    hint: str  # how to obtain the files; ``{root}`` is replaced by the absolute root


_FMNIST_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_LAYOUTS: dict[str, _Layout] = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        files={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
            "test": ("test_batch", "batches.meta"),
        },
        hint=(
            "download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and extract it in {root} so that "
            "{root}/cifar-10-batches-py/data_batch_1 exists"
        ),
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        files={"train": ("train", "meta"), "test": ("test", "meta")},
        hint=(
            "download the CIFAR-100 python version (cifar-100-python.tar.gz) from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and extract it in {root} so that "
            "{root}/cifar-100-python/train exists"
        ),
    ),
    "svhn": _Layout(
        folder="",
        files={s: (f"{s}_32x32.mat",) for s in ("train", "test", "extra")},
        hint=(
            "download the cropped-digits files (Format 2: train_32x32.mat, test_32x32.mat, "
            "extra_32x32.mat) from http://ufldl.stanford.edu/housenumbers/ into {root}"
        ),
    ),
    "stl10": _Layout(
        folder="stl10_binary",
        files={
            "train": ("train_X.bin", "train_y.bin", "class_names.txt"),
            "test": ("test_X.bin", "test_y.bin", "class_names.txt"),
            "unlabeled": ("unlabeled_X.bin", "class_names.txt"),
        },
        hint=(
            "download the binary version (stl10_binary.tar.gz) from "
            "https://cs.stanford.edu/~acoates/stl10/ and extract it in {root} so that "
            "{root}/stl10_binary/train_X.bin exists"
        ),
    ),
    # torchvision's FashionMNIST checks all four raw files whatever the split, so both
    # splits need all four.
    "fashion_mnist": _Layout(
        folder="FashionMNIST/raw",
        files={"train": _FMNIST_RAW, "test": _FMNIST_RAW},
        hint=(
            "download the four *-ubyte.gz files from "
            "https://github.com/zalandoresearch/fashion-mnist, gunzip them and put them in "
            "{root}/FashionMNIST/raw so that {root}/FashionMNIST/raw/train-images-idx3-ubyte exists"
        ),
    ),
}


def _layout(name: str, split: str) -> _Layout:
    """The layout of ``name``, after checking that ``name`` and ``split`` are valid."""
    if name not in _LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(REAL_DATASETS)}")
    layout = _LAYOUTS[name]
    if split not in layout.files:
        raise ValueError(f"unknown split {split!r} for {name}; choose one of {', '.join(layout.files)}")
    return layout


def _root(root: str | Path) -> Path:
    return Path(os.path.expanduser(root))


def expected_files(name: str, root: str | Path, split: str) -> list[Path]:
    """The files ``load_real(name, root, split)`` needs, as paths under ``root``."""
    layout = _layout(name, split)
    base = _root(root) / layout.folder
    return [base / f for f in layout.files[split]]


def _check_files(name: str, root: str | Path, split: str) -> None:
    """Raise ``DatasetMissingError`` naming every missing file and how to get them."""
    missing = [p for p in expected_files(name, root, split) if not p.is_file()]
    if not missing:
        return
    folder = _root(root).absolute()
    lines = "\n".join(f"  {p.absolute()}" for p in missing)
    hint = _LAYOUTS[name].hint.format(root=folder)
    raise DatasetMissingError(
        f"{name} ({split} split): looked in {folder} and these files are missing:\n{lines}\n"
        f"This project never downloads datasets; to get them, {hint}."
    )


# ---------------------------------------------------------------------------
# Restricted unpickling (CIFAR)
# ---------------------------------------------------------------------------


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain data; nothing of it was run."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; latin-1 only."""
    if not isinstance(text, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused _codecs.encode call with unexpected arguments")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol-2 pickles use it for b""; any argument is refused."""
    if args:
        raise UnsafePickleError("refused bytes(...) call with arguments")
    return b""


# The callables that numpy's ndarray pickling refers to, whatever numpy calls their
# module (numpy.core in 1.x and in old pickles, numpy._core in 2.x).
_NP_RECONSTRUCT = cast(Callable[..., Any], np.ndarray.__reduce__(np.zeros(1))[0])
_NP_FROMBUFFER = cast(Callable[..., Any], np.ndarray.__reduce_ex__(np.zeros(1), 5)[0])

_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain data: dict/list/tuple/str/bytes/int/float and numpy arrays.

    Containers and scalars are built by pickle opcodes that import nothing; any global
    (a class or function a pickle wants to call) must be in ``_SAFE_GLOBALS``, otherwise
    ``find_class`` raises before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load global {module}.{name}: not plain data") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused persistent id: not plain data")


def _str_key(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _read_pickle_dict(path: Path) -> dict[str, Any]:
    """Read a CIFAR pickle file with the restricted unpickler; keys become str.

    Raises ``UnsafePickleError`` if the file asks for anything but plain data and
    ``ValueError`` if it is not a readable pickled dict.

    The official files were written by Python 2 (str keys/values, loaded here as latin-1
    str); files re-written by Python 3 usually have bytes keys. Both are accepted.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except Exception as err:  # truncated or garbage file
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_str_key(k): v for k, v in obj.items()}


def _names(path: Path, key: str) -> list[str]:
    """The list of class names stored under ``key`` in a CIFAR meta file."""
    meta = _read_pickle_dict(path)
    if key not in meta:
        raise ValueError(f"{path}: no {key!r} entry")
    return [str(_str_key(n)) for n in meta[key]]


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 from one CIFAR batch file."""
    batch = _read_pickle_dict(path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: expected 'data' and {label_key!r} entries, found {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    # Each row is the R plane, then G, then B, each 32 rows of 32 pixels.
    images = data.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _load_cifar(name: str, root: str | Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR10/100 with the restricted unpickler; CIFAR100 gives its 100 fine labels."""
    *batch_paths, meta_path = expected_files(name, root, split)
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for path in batch_paths:
        if limit is not None and count >= limit and images:
            break
        x, y = _cifar_batch(path, label_key)
        images.append(x)
        labels.append(y)
        count += len(x)
    return np.concatenate(images), np.concatenate(labels), _names(meta_path, names_key)


# ---------------------------------------------------------------------------
# SVHN, STL10, Fashion-MNIST
# ---------------------------------------------------------------------------


def _load_svhn(root: str | Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SVHN cropped digits: X is (32, 32, 3, N) uint8, y is (N, 1) with 10 meaning digit 0."""
    import scipy.io  # only this loader needs scipy

    (path,) = expected_files("svhn", root, split)
    mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables 'X' and 'y'")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: 'X' must be uint8 (H, W, 3, N), got {x.dtype} {x.shape}")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(labels) != x.shape[3]:
        raise ValueError(f"{path}: {x.shape[3]} images but {len(labels)} labels")
    labels[labels == 10] = 0  # as torchvision does: class index == digit
    images = x.transpose(3, 0, 1, 2)  # (H, W, C, N) -> (N, H, W, C)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), labels, list(SVHN_CLASSES)


def _read_stl10_images(path: Path, limit: int | None) -> np.ndarray:
    """STL10 X file: per image 3 planes of 96x96, each stored column-major."""
    per_image = 3 * STL10_SIZE * STL10_SIZE
    n_bytes = path.stat().st_size
    if n_bytes % per_image:
        raise ValueError(f"{path}: size {n_bytes} is not a multiple of {per_image} bytes (3x96x96)")
    count = -1 if limit is None else min(limit, n_bytes // per_image) * per_image
    raw = np.fromfile(path, dtype=np.uint8, count=count)
    # (N, C, W, H) on disk -> (N, H, W, C)
    return np.ascontiguousarray(raw.reshape(-1, 3, STL10_SIZE, STL10_SIZE).transpose(0, 3, 2, 1))


def _read_stl10_labels(path: Path, limit: int | None) -> np.ndarray:
    """STL10 y file: one uint8 per image, 1-based."""
    raw = np.fromfile(path, dtype=np.uint8, count=-1 if limit is None else limit).astype(np.int64)
    if raw.size and raw.min() < 1:
        raise ValueError(f"{path}: labels must be 1-based (found 0)")
    return raw - 1


def _load_stl10(root: str | Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """STL10; the unlabeled split gets label -1 everywhere, as in torchvision."""
    paths = expected_files("stl10", root, split)
    images = _read_stl10_images(paths[0], limit)
    if split == "unlabeled":
        labels = np.full(len(images), -1, dtype=np.int64)
    else:
        labels = _read_stl10_labels(paths[1], limit)
        if len(labels) != len(images):
            raise ValueError(f"{paths[1]}: {len(images)} images but {len(labels)} labels")
    classes = [c for c in paths[-1].read_text().splitlines() if c.strip()]
    return images, labels, classes


def _load_fashion_mnist(root: str | Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST through torchvision (no MD5 check there); grayscale (N, 28, 28)."""
    from torchvision.datasets import FashionMNIST  # heavy import, only when needed

    ds = FashionMNIST(str(_root(root)), train=split == "train", download=False)
    images = ds.data.numpy()
    labels = ds.targets.numpy().astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, list(ds.classes)


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize each (H, W) or (H, W, 3) uint8 image to (size, size) with PIL's bilinear
    filter (antialiased when shrinking)."""
    out = np.empty((len(images), size, size) + images.shape[3:], dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
    return out


def _to_rgb_size(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) gray or (N, H, W, 3) RGB uint8 -> (N, size, size, 3) RGB uint8.

    Images already at ``size`` are passed through unchanged; gray is replicated to 3 channels.
    """
    if images.shape[1:3] != (size, size):
        images = _resize(images, size)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return np.ascontiguousarray(images, dtype=np.uint8)


def load_real(
    name: str, root: str | Path, split: str = "train", size: int = 32, limit: int | None = None
) -> ImageSet:
    """Load split ``split`` of dataset ``name`` (one of ``REAL_DATASETS``) from ``root``.

    Images come back as uint8 RGB (N, size, size, 3), labels under task ``"class"``
    (-1 for STL10's unlabeled split), class names in ``classes["class"]``. ``limit``
    keeps the first ``limit`` examples. Raises ``ValueError`` for an unknown name or
    split and ``DatasetMissingError`` when files are missing; never downloads.
    """
    _layout(name, split)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    _check_files(name, root, split)

    if name in ("cifar10", "cifar100"):
        images, labels, classes = _load_cifar(name, root, split, limit)
    elif name == "svhn":
        images, labels, classes = _load_svhn(root, split, limit)
    elif name == "stl10":
        images, labels, classes = _load_stl10(root, split, limit)
    else:
        images, labels, classes = _load_fashion_mnist(root, split, limit)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    return ImageSet(
        name=f"{name}-{split}",
        images=_to_rgb_size(images, size),
        labels={TASK: labels},
        classes={TASK: classes},
    )
