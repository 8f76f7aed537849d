"""ResNets with the CIFAR stem and a width multiplier (torchvision's layout, without importing it).

The CIFAR stem replaces the 7x7/stride-2 convolution and the max-pool of the ImageNet stem by a
3x3/stride-1 convolution, so 32x32 inputs keep their resolution in the first stage (as in the
stealing and dataset-inference papers). ``width`` is the channel count of the first stage
(64 in torchvision); stages use width, 2w, 4w, 8w. The classifier is an identity, so the encoder
returns the pooled representation.

Why not ``torchvision.models.resnet``: importing it runs ``torchvision/__init__``, which pulls in
``torch._dynamo`` (via ``torchvision.ops``) and roughly doubles the start-up of every server,
attacker and defender process (``bench/import_time.py``). These classes keep torchvision's
parameter names, forward pass and weight initialisation, including the random-number stream of
its constructor (the discarded width-64 layout is built first, as ``ResNet.__init__`` does), so a
seed gives bit-identical weights and every checkpoint loads unchanged;
``tests/shared/test_models.py`` checks both against torchvision itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.cpu import needs_subsampled_pointwise


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride > 1 (a downsampling shortcut); a plain ``nn.Conv2d`` with the
    same parameters. Where oneDNN's AVX2 kernel would corrupt memory computing its weight gradient
    (``shared/cpu.py``), it runs as a stride-1 convolution of the subsampled input: the same sums of
    the same products."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad and torch.is_grad_enabled() and needs_subsampled_pointwise(
                self.in_channels, self.kernel_size, self.stride, self.padding):
            sh, sw = self.stride
            return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, self.dilation, self.groups)
        return super().forward(x)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    if stride > 1:
        return StridedPointwiseConv(cin, cout, kernel_size=1, stride=stride, bias=False)
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem, no max-pool, a configurable width and no classifier."""

    def __init__(self, arch: str, width: int = 64) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        super().__init__()
        block, layers = ARCHITECTURES[arch]
        # torchvision's ImageNet layout at width 64 first, initialised and then discarded: it only
        # keeps the random stream (hence every seeded init) identical to torchvision's.
        self._build(block, layers, 64, stem=nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False))
        self.fc: nn.Module = nn.Linear(512 * block.expansion, 1000)
        _init(self)
        self._build(block, layers, width, stem=conv3x3(3, width))
        self.maxpool: nn.Module = nn.Identity()
        self.fc = nn.Identity()
        _init(self)
        self.arch = arch
        self.width = width
        self.out_dim = width * 8 * block.expansion

    def _build(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int, stem: nn.Conv2d) -> None:
        self.inplanes = width
        self.conv1 = stem
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        out = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def representation_dim(arch: str, width: int) -> int:
    """Dimension of the pooled representation of ``arch`` at ``width``."""
    block, _ = ARCHITECTURES[arch]
    return width * 8 * block.expansion


def build_encoder(arch: str, width: int = 64) -> CifarResNet:
    return CifarResNet(arch, width)
