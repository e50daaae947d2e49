"""VGG-16 with BatchNorm, in the CIFAR form used by the pruning literature (e.g. Li et al., 2017,
"Pruning Filters for Efficient ConvNets"): thirteen conv3x3-BN-ReLU layers in five stages with
2x2 max pooling, then global average pooling and a single 512 -> num_classes linear layer.

The max pools use ``ceil_mode=True`` so that 28x28 inputs survive the five halvings
(28 -> 14 -> 7 -> 4 -> 2 -> 1) as well as 32x32 ones.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.models._registry import kaiming_init_, register_model

MAX_POOL = "M"
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, MAX_POOL,
    128, 128, MAX_POOL,
    256, 256, 256, MAX_POOL,
    512, 512, 512, MAX_POOL,
    512, 512, 512, MAX_POOL,
)


class CifarVGG(nn.Module):
    def __init__(self, layers: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        width = in_channels
        for layer in layers:
            if layer == MAX_POOL:
                modules.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                modules += [nn.Conv2d(width, layer, 3, padding=1, bias=False), nn.BatchNorm2d(layer), nn.ReLU()]
                width = layer
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarVGG(VGG16_LAYERS, num_classes, in_channels)
