"""Models that export badly, built by import path (``export_models:zeta_cnn``) in the export tests
(tests/ is on sys.path via conftest, as for ``user_models``)."""
from __future__ import annotations

import torch
from torch import nn


class ZetaCNN(nn.Module):
    """A conv followed by the Hurwitz zeta function, an operator without an ONNX mapping."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(self.conv(x).abs() + 2.0, 2.0).mean((2, 3))


class NoisyCNN(nn.Module):
    """A conv whose output gets fresh noise on every call: exports fine, never matches PyTorch."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y + torch.rand_like(y)


def zeta_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ZetaCNN(num_classes, in_channels)


def noisy_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return NoisyCNN(num_classes, in_channels)
