"""Small configurations of real model families whose constructors take classes or config
objects, built by import path (``family_models:resnext_tiny``) in the model-family contract test
(tests/ is on sys.path via conftest, as for ``user_models``)."""
from __future__ import annotations

from torch import nn
from torchvision.models import convnext, resnet


def resnext_tiny(num_classes: int = 10) -> nn.Module:
    """ResNeXt's 32x4d grouped bottlenecks, one block per stage."""
    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=num_classes, groups=32, width_per_group=4)


def convnext_tiny_blocks(num_classes: int = 10) -> nn.Module:
    """torchvision's ConvNeXt (LayerNorm2d stem and downsampling, channels-last LayerNorm and
    layer scale in the blocks) with two stages of one block."""
    setting = [convnext.CNBlockConfig(32, 64, 1), convnext.CNBlockConfig(64, None, 1)]
    return convnext.ConvNeXt(setting, num_classes=num_classes)
