"""An AlexNet (Krizhevsky et al., 2012) scaled to CIFAR-size inputs.

Five conv layers with 64, 192, 384, 256 and 256 channels, all 3x3 with padding 1 and ReLU,
2x2 max pooling (``ceil_mode=True``, so 28x28 inputs work as well as 32x32) after the first,
second and fifth, then 2x2 adaptive average pooling and three linear layers
(1024 -> 1024 -> 1024 -> num_classes).

Like the original there is no BatchNorm, so it exercises pruning of conv biases and of a
conv -> flatten -> linear boundary (each conv channel feeds four linear inputs). Unlike the
original there is no dropout: pruning criteria that score channels from forward passes and
the accuracy measured after pruning should not depend on a random mask.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.models._registry import kaiming_init_, register_model

POOLED_SIZE = 2
HIDDEN_WIDTH = 1024


class CifarAlexNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        self.classifier = nn.Sequential(
            nn.Linear(256 * POOLED_SIZE * POOLED_SIZE, HIDDEN_WIDTH), nn.ReLU(),
            nn.Linear(HIDDEN_WIDTH, HIDDEN_WIDTH), nn.ReLU(),
            nn.Linear(HIDDEN_WIDTH, num_classes),
        )
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("alexnet_cifar")
def alexnet_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarAlexNet(num_classes, in_channels)
