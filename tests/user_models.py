"""Models a user might bring, built by import path (``user_models:tiny_cnn``) in the tests of
a model of one's own (tests/ is on sys.path via conftest, as for ``tiny_models``)."""
from __future__ import annotations

import torch
from torch import nn


class UserCNN(nn.Module):
    """conv(width)-BN-ReLU -> conv(2 width, stride 2)-BN-ReLU -> pool -> linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> nn.Module:
    return UserCNN(num_classes, in_channels, width)


def ten_class_cnn(width: int = 4) -> nn.Module:
    """A factory that takes neither num_classes nor in_channels (1 channel, 10 classes fixed)."""
    return UserCNN(10, 1, width)


def not_a_model(num_classes: int = 10) -> int:
    return num_classes


class GroupedCNN(nn.Module):
    """A grouped (not depthwise) conv: channels are removed one per group at a time."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.grouped(torch.relu(self.stem(x)))).mean((2, 3)))


def grouped_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return GroupedCNN(num_classes, in_channels)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view as (groups, channels / groups), transpose, flatten."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffledCNN(nn.Module):
    """A channel shuffle between two convs: removing one channel breaks its reshape."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.shuffle = ChannelShuffle(2)
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle(torch.relu(self.stem(x)))
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


def shuffled_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ShuffledCNN(num_classes, in_channels)
