"""The models the structure tests prune, each traced once per session."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.models import create_model
from pruning.structure import PruningSpace
from tiny_models import with_random_bn_stats

#: name -> (C, H, W) input; the registered models as the issue asks (resnet20 on 1x28x28)
SHAPES = {
    "tiny_resnet": (1, 28, 28),
    "tiny_cnn": (1, 28, 28),
    "resnet20": (1, 28, 28),
    "mobilenet_v1": (3, 32, 32),
    "vgg16": (3, 32, 32),
    "alexnet_cifar": (3, 32, 32),
}
_CACHE: dict[str, tuple[nn.Module, torch.Tensor, PruningSpace]] = {}


@pytest.fixture
def model_space(request):
    """name -> (model, example input of batch 2, space), built once per name; do not mutate.

    The tiny models are the conftest fixtures of the same name (TinyResNet, TinyCNN)."""

    def get(name: str) -> tuple[nn.Module, torch.Tensor, PruningSpace]:
        if name not in _CACHE:
            if name in ("tiny_resnet", "tiny_cnn"):
                model = request.getfixturevalue(name)
            else:  # non-trivial BN statistics: a wrongly kept BN channel changes the outputs
                torch.manual_seed(0)
                model = with_random_bn_stats(create_model(name, in_channels=SHAPES[name][0]), 2)
            x = torch.randn(2, *SHAPES[name], generator=torch.Generator().manual_seed(3))
            _CACHE[name] = (model, x, PruningSpace.build(model, x))
        return _CACHE[name]

    return get
