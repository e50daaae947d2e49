"""Fixtures shared by the whole suite (tiny models from ``tiny_models``, inputs, batches)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_models import TinyCNN, TinyResNet, with_random_bn_stats

# One intra-op thread: the suite then runs at the same speed on a busy 2-core machine as on an
# idle one (oversubscribed OpenMP threads slow small ops down by orders of magnitude), and
# results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_stats(TinyResNet(), 0)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_stats(TinyCNN(), 1)


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def calibration_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
