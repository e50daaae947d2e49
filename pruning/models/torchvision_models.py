"""ImageNet models taken from torchvision, randomly initialised (weights are never downloaded).

resnet50 is torchvision's ResNet-50; for ``in_channels != 3`` its 7x7 stem conv is replaced by
one reading ``in_channels`` channels. Its ReLUs are switched to out-of-place so that forward
hooks which record a BatchNorm output see that output, not the ReLU applied to it afterwards.
(torchvision's Bottleneck still adds the shortcut in place, ``out += identity``, onto the
last BatchNorm's output; a hook that keeps that tensor should copy it.)
"""
from __future__ import annotations

import torchvision
from torch import nn

from pruning.models._registry import register_model


@register_model("resnet50")
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        stem = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model
