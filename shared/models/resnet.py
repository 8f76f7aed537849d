"""torchvision ResNets with the CIFAR stem and a width multiplier.

The CIFAR stem replaces the 7x7/stride-2 convolution and the max-pool of the ImageNet stem by a
3x3/stride-1 convolution, so 32x32 inputs keep their resolution in the first stage (as in the
stealing and dataset-inference papers). ``width`` is the channel count of the first stage
(64 in torchvision); stages use width, 2w, 4w, 8w. Parameter names match torchvision's, and the
classifier is replaced by an identity so the encoder returns the pooled representation.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class CifarResNet(ResNet):
    """torchvision ResNet with a 3x3 stride-1 stem, no max-pool and a configurable width."""

    def __init__(self, arch: str, width: int = 64) -> None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        block, layers = ARCHITECTURES[arch]
        super().__init__(block, layers)  # builds the torchvision layout at width 64
        # Rebuild every stage at the requested width, reusing torchvision's own _make_layer.
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = self._norm_layer(width)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Identity()
        self.arch = arch
        self.width = width
        self.out_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def representation_dim(arch: str, width: int) -> int:
    """Dimension of the pooled representation of ``arch`` at ``width``."""
    block, _ = ARCHITECTURES[arch]
    return width * 8 * block.expansion


def build_encoder(arch: str, width: int = 64) -> CifarResNet:
    return CifarResNet(arch, width)
