"""The layer game (pruning.games.LayerGame): the fx downstream-only path against full forwards,
the fallback to hooks, cost counters, value functions, and that the model is left alone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.games import CoalitionGame, FunctionGame, GameSettings, LayerGame, all_coalitions
from pruning.structure import PruningSpace


class SizeViewNet(nn.Module):
    """In-place ReLUs and ``x.view(x.size(0), -1)``: a size() read on the cached path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(x.view(x.size(0), -1))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.mean() > -100:
            return self.inner(x)
        return -self.inner(x)


def _fx_and_hooks_agree(model, inputs):
    space = PruningSpace.build(model, inputs[:2])
    targets = torch.arange(len(inputs)) % 5
    g = torch.Generator().manual_seed(0)
    for group in space.groups:
        fx = LayerGame(model, group, inputs, targets, GameSettings(mode="auto", max_batch=48))
        hooks = LayerGame(model, group, inputs, targets, GameSettings(mode="hooks", max_batch=48))
        assert fx.mode == "fx", (group.name, fx.fallback_reason)
        masks = torch.rand(12, group.size, generator=g) < 0.5
        masks[0], masks[1] = True, False
        assert torch.allclose(fx.values(masks), hooks.values(masks), atol=1e-5, rtol=0), group.name


def test_fx_downstream_path_matches_full_forward(tiny_resnet, tiny_cnn, small_batch):
    # residual groups, a depthwise pair (nested masked outputs) and a hidden Linear layer
    _fx_and_hooks_agree(tiny_resnet, small_batch)
    _fx_and_hooks_agree(tiny_cnn, small_batch)
    torch.manual_seed(0)
    _fx_and_hooks_agree(SizeViewNet().eval(), small_batch)


def test_untraceable_model_falls_back_to_hooks(tiny_cnn, small_batch):
    model = Untraceable(tiny_cnn).eval()
    space = PruningSpace.build(model, small_batch[:2])
    group = space["inner.features.7"]
    targets = torch.zeros(len(small_batch), dtype=torch.long)
    game = LayerGame(model, group, small_batch, targets)
    assert game.mode == "hooks" and game.fallback_reason
    with pytest.raises(Exception):
        LayerGame(model, group, small_batch, targets, GameSettings(mode="fx"))
    plain = LayerGame(tiny_cnn, PruningSpace.build(tiny_cnn, small_batch[:2])["features.7"], small_batch, targets)
    masks = torch.rand(5, group.size, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.allclose(game.values(masks), plain.values(masks), atol=1e-5, rtol=0)


def test_values_count_cost_and_leave_the_model_alone(tiny_resnet, small_batch, predicted_game):
    tiny_resnet.train()
    game = predicted_game(tiny_resnet, "layer2.conv1", max_batch=64)
    assert game.chunk == 4
    before = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    game.values(torch.ones(10, game.size, dtype=torch.bool))
    assert game.coalitions == 10 and game.evaluations == 10 * len(small_batch) and game.forwards == 3
    assert tiny_resnet.training and all(m.training for m in tiny_resnet.modules())
    assert all(not m._forward_hooks for m in tiny_resnet.modules())
    assert all(torch.equal(before[k], v) for k, v in tiny_resnet.state_dict().items())


def test_value_functions(tiny_resnet, predicted_game):
    game = predicted_game(tiny_resnet, "layer2.conv1", value="accuracy")
    assert game.endpoints()[0] == 1.0  # the targets are the full model's predictions
    margin = predicted_game(tiny_resnet, "layer2.conv1", value="margin")
    assert margin.endpoints()[0] >= 0
    with pytest.raises(ValueError, match="logprob"):
        predicted_game(tiny_resnet, "layer2.conv1", value="neg_ce")



def test_layer_games_satisfy_the_protocol(layer1_game):
    assert isinstance(layer1_game, CoalitionGame) and isinstance(FunctionGame(2, len), CoalitionGame)
    assert all_coalitions(3).sum(0).tolist() == [4, 4, 4]

