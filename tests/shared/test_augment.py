"""Augmentations (shared/augment.py): SimCLR views, 90-degree rotations."""

from __future__ import annotations

import torch

from shared.augment import AugmentSpec, rotate90, simclr_view


def test_views_are_valid_images_and_differ():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    v1, v2 = simclr_view(x, AugmentSpec(), g), simclr_view(x, AugmentSpec(), g)
    assert v1.shape == x.shape and v1.min() >= 0 and v1.max() <= 1
    assert not torch.allclose(v1, v2)


def test_views_deterministic_for_a_seed():
    x = torch.rand(8, 3, 32, 32)
    a = simclr_view(x, AugmentSpec(), torch.Generator().manual_seed(3))
    b = simclr_view(x, AugmentSpec(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_rotate90_matches_torch():
    x = torch.rand(4, 3, 8, 8)
    k = torch.tensor([0, 1, 2, 3])
    r = rotate90(x, k)
    for i in range(4):
        assert torch.equal(r[i], torch.rot90(x[i], i, dims=(1, 2)))
