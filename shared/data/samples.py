"""The real sample photos foolbox ships (the optional extra ``data``): 20 files each of five datasets.

| dataset           | files                         | format                                        |
|-------------------|-------------------------------|-----------------------------------------------|
| ``cifar10``       | ``cifar10_NN_LABEL.png``      | 32 x 32 RGB PNG                               |
| ``cifar100``      | ``cifar100_NN_LABEL.png``     | 32 x 32 RGB PNG (fine labels)                 |
| ``mnist``         | ``mnist_NN_LABEL.png``        | 28 x 28 greyscale PNG                         |
| ``fashion_mnist`` | ``fashionMNIST_NN_LABEL.png`` | 28 x 28 greyscale PNG                         |
| ``imagenet``      | ``imagenet_NN_LABEL.jpg``     | progressive JPEG, 512 x 512 (one 1024 x 683)  |

``NN`` is the index (00-19) and ``LABEL`` the class index. The folder is found from foolbox's package
spec without importing foolbox (which would pull in eagerpy and GitPython). These are real photos
and scanned digits in real PNG and JPEG files, for checks that synthetic arrays cannot make (what
the API does with real file bytes: tests/server/test_real_photos.py); 20 images per dataset are no
training set.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.data.base import DatasetMissingError, ImageSet
from shared.images import resize_center_crop, to_rgb

SAMPLE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet")
TASK = "class"
INSTALL_HINT = "install the optional extra 'data' (uv sync --extra data)"

# foolbox's spelling of each dataset in its file names
_FILE_PREFIX = {"fashion_mnist": "fashionMNIST"}
_DATASET_OF = {_FILE_PREFIX.get(d, d): d for d in SAMPLE_DATASETS}
_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)_(?P<index>\d+)_(?P<label>\d+)\.(?:png|jpg)$")

CLASSES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


@dataclass(frozen=True)
class SamplePhoto:
    """One bundled photo: its file, dataset (``SAMPLE_DATASETS``), index within the dataset and class label."""

    path: Path
    dataset: str
    index: int
    label: int

    @property
    def name(self) -> str:
        return self.path.name

    def read_bytes(self) -> bytes:
        """The file's bytes as stored (PNG or JPEG): what a client uploads."""
        return self.path.read_bytes()


def samples_dir() -> Path:
    """foolbox's ``data`` folder; :class:`DatasetMissingError` naming the extra when foolbox is absent."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise DatasetMissingError(f"the sample photos come with the package foolbox, which is not installed: {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "data"
    if not folder.is_dir():
        raise DatasetMissingError(f"foolbox is installed but has no sample photos at {folder}: {INSTALL_HINT}")
    return folder


def sample_photos(dataset: str | None = None, root: Path | None = None) -> list[SamplePhoto]:
    """The bundled photos of ``dataset`` (None: every dataset), ordered by dataset then index.

    ``root``: another folder laid out like foolbox's (default :func:`samples_dir`). Files of other
    names are ignored; a dataset with no files raises :class:`DatasetMissingError`.
    """
    if dataset is not None and dataset not in SAMPLE_DATASETS:
        raise ValueError(f"unknown sample dataset {dataset!r}; one of {', '.join(SAMPLE_DATASETS)}")
    folder = samples_dir() if root is None else Path(root)
    photos = []
    for path in folder.iterdir() if folder.is_dir() else ():
        m = _NAME.match(path.name)
        if m is None or m["prefix"] not in _DATASET_OF:
            continue
        ds = _DATASET_OF[m["prefix"]]
        if dataset is None or ds == dataset:
            photos.append(SamplePhoto(path, ds, int(m["index"]), int(m["label"])))
    if not photos:
        which = dataset or "any dataset"
        raise DatasetMissingError(f"no sample photos of {which} in {folder}: {INSTALL_HINT}")
    order = {d: i for i, d in enumerate(SAMPLE_DATASETS)}
    return sorted(photos, key=lambda p: (order[p.dataset], p.index))


def load_samples(dataset: str, size: int, root: Path | None = None) -> ImageSet:
    """One dataset's photos as an :class:`ImageSet` of ``size`` x ``size`` RGB images, converted and
    resized the way the server treats an upload (``shared.images.to_rgb``, then ``resize_center_crop``:
    shorter side to ``size``, bicubic, centre crop); labels under the task ``"class"``."""
    photos = sample_photos(dataset, root)
    images = np.empty((len(photos), size, size, 3), dtype=np.uint8)
    for i, photo in enumerate(photos):
        with Image.open(photo.path, formats=("PNG", "JPEG")) as img:
            img.load()
            images[i] = resize_center_crop(to_rgb(img), size)
    labels = np.array([p.label for p in photos], dtype=np.int64)
    classes = {TASK: CLASSES[dataset]} if dataset in CLASSES else {}
    return ImageSet(name=f"samples-{dataset}", images=images, labels={TASK: labels}, classes=classes)
