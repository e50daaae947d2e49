"""A small encoder-decoder for semantic segmentation (``unet-small``): per-pixel class logits.

Three stride-2 downsamplings and three nearest-neighbour upsamplings, with a U-Net's skip
connections made additive (``decoder + encoder`` at the same resolution, as in LinkNet), so a
skip couples the channels of both sides into one prunable group instead of widening a
concatenation. Widths ``width``, 2x, 4x and 8x (at the bottom, a receptive field of about 50
pixels: a whole 28-pixel item); outputs ``[B, num_classes, H, W]`` for inputs whose sides are
multiples of 8.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.models._registry import kaiming_init_, register_model

__all__ = ["UNetSmall"]


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class UNetSmall(nn.Module):
    def __init__(self, num_classes: int = 11, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(_conv(in_channels, width), _conv(width, width))
        self.enc2 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width))
        self.enc3 = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width))
        self.bottom = nn.Sequential(_conv(4 * width, 8 * width, 2), _conv(8 * width, 8 * width))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec3 = _conv(8 * width, 4 * width)
        self.dec2 = _conv(4 * width, 2 * width)
        self.dec1 = _conv(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.enc1(x)
        skip2 = self.enc2(skip1)
        skip3 = self.enc3(skip2)
        x = self.dec3(self.up(self.bottom(skip3))) + skip3
        x = self.dec2(self.up(x)) + skip2
        x = self.dec1(self.up(x)) + skip1
        return self.head(x)


@register_model("unet-small")
def unet_small(num_classes: int = 11, in_channels: int = 1, width: int = 16) -> nn.Module:
    return UNetSmall(num_classes, in_channels, width)
