"""Fixtures of the games tests: a small image batch and layer games built on it."""
from __future__ import annotations

import pytest
import torch

from pruning.games import GameSettings, LayerGame
from pruning.structure import PruningSpace


@pytest.fixture
def small_batch():
    """12x12 images keep every forward cheap (the tiny models pool adaptively)."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 1, 12, 12, generator=g)


@pytest.fixture
def predicted_game(small_batch):
    """``build(model, group name, **options)``: that group's game on ``small_batch`` with the
    model's own predictions as targets (so the full layer is the best coalition, as for a
    trained model on its training distribution)."""

    def build(model, name, **kwargs) -> LayerGame:
        space = PruningSpace.build(model, small_batch[:2])
        with torch.no_grad():
            targets = model(small_batch).argmax(1)
        return LayerGame(model, space[name], small_batch, targets, GameSettings(**kwargs))

    return build


@pytest.fixture
def layer1_game(tiny_resnet, predicted_game) -> LayerGame:
    return predicted_game(tiny_resnet, "layer1.conv1")
