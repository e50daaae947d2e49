"""CIFAR-style ResNets (He et al., 2016, section 4.2): resnet20, resnet56 and resnet110.

A 3x3 stem with 16 channels, then three stages of ``n = (depth - 2) / 6`` BasicBlocks with
16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2), global average
pooling and a linear classifier.

Where a block changes the shape, its shortcut is the projection "option B" (1x1 conv + BN)
rather than the paper's parameter-free "option A" (strided identity zero-padded to the new
width): Torch-Pruning cannot trace the zero-padding, so option A channels could not be pruned.
Option B adds two 1x1 convs (about 2.8k parameters) per network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pruning.errors import InputError
from pruning.models._registry import kaiming_init_, register_model

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise InputError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages = []
        width = STAGE_WIDTHS[0]
        for stage_index, stage_width in enumerate(STAGE_WIDTHS):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(width, stage_width, stride))
                width = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels)
