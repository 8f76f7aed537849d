"""Encoders (shared/models): the CIFAR stem, dimensions, and bit-identity with torchvision's ResNet."""

from __future__ import annotations

import pytest
import torch

from shared.models import build_encoder, representation_dim


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 8, 64), ("resnet34", 4, 32), ("resnet50", 4, 128)])
def test_cifar_stem_and_dims(arch, width, dim):
    m = build_encoder(arch, width)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, dim) == (2, representation_dim(arch, width))


def _torchvision_cifar_resnet(arch: str, width: int) -> torch.nn.Module:
    """The encoder as built before shared/models/resnet.py stopped importing torchvision (kept as the reference)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
    m = ResNet(block, layers)
    m.inplanes, m.dilation = width, 1
    m.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    m.bn1 = m._norm_layer(width)
    m.maxpool = nn.Identity()
    for i, mult in enumerate((1, 2, 4, 8)):
        setattr(m, f"layer{i + 1}", m._make_layer(block, width * mult, layers[i], stride=1 if i == 0 else 2))
    m.fc = nn.Identity()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return m


@pytest.mark.parametrize("arch,width", [("resnet18", 4), ("resnet18", 16), ("resnet34", 4), ("resnet50", 4)])
def test_encoder_is_bit_identical_to_torchvision(arch, width):
    """Same parameter names, same seeded weights (and random stream after), same outputs as torchvision's ResNet."""
    torch.manual_seed(3)
    ours, after_ours = build_encoder(arch, width), torch.rand(3)
    torch.manual_seed(3)
    ref, after_ref = _torchvision_cifar_resnet(arch, width), torch.rand(3)
    assert torch.equal(after_ours, after_ref)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(4, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        with torch.no_grad():
            assert torch.equal(ours(x), ref(x)), mode
