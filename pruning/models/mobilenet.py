"""MobileNetV1 (Howard et al., 2017) for CIFAR-size inputs.

A 3x3 stem conv with 32 channels at stride 1 (not 2: a 32x32 image has no resolution to spare),
then the paper's 13 depthwise-separable blocks (depthwise 3x3 conv with groups = channels,
BN, ReLU, then pointwise 1x1 conv, BN, ReLU) with widths 64, 128, 128, 256, 256, 512 x 6,
1024, 1024. Only the first block of the 128, 256, 512 and 1024 widths has stride 2, so a
32x32 input ends at 2x2 (28x28 also ends at 2x2); then global average pooling and a
1024 -> num_classes linear layer.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.models._registry import kaiming_init_, register_model

STEM_WIDTH = 32
# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.depthwise(x)))
        return self.relu2(self.bn2(self.pointwise(x)))


class CifarMobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STEM_WIDTH, 3, 1, 1, bias=False), nn.BatchNorm2d(STEM_WIDTH), nn.ReLU()
        )
        blocks = []
        width = STEM_WIDTH
        for out_channels, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(width, out_channels, stride))
            width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


@register_model("mobilenet_v1")
def mobilenet_v1(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarMobileNetV1(num_classes, in_channels)
