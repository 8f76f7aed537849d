"""The one in-memory form every dataset takes in this project."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not where they were expected; the message names them."""


@dataclass(frozen=True)
class ImageSet:
    """Labelled RGB images as uint8 arrays.

    images: (N, H, W, 3) uint8, RGB.
    labels: task name -> (N,) int64 labels; ``classes`` gives each task's class names.
    """

    name: str
    images: np.ndarray
    labels: dict[str, np.ndarray]
    classes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs = self.images
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 (N, H, W, 3), got {imgs.dtype} {imgs.shape}")
        for task, y in self.labels.items():
            if y.shape != (len(imgs),):
                raise ValueError(f"{self.name}: labels[{task!r}] has shape {y.shape}, expected ({len(imgs)},)")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> ImageSet:
        return ImageSet(
            name=name or self.name,
            images=self.images[idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            classes=self.classes,
        )
