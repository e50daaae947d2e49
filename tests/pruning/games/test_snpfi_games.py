"""SNPFI's games (pruning.games): utilization strength, automatic sparsity and interaction indices."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning.games import (
    FunctionGame,
    LayerGame,
    exact_interaction,
    exact_shapley,
    mean_interaction,
    pairwise_interactions,
    snpfi_sparsity,
    utilization_curve,
)
from pruning.structure import PruningSpace


class MonotoneNet(nn.Module):
    """conv -> BN -> ReLU -> mean -> fc with logit_0 - logit_1 = 2 * sum of the channel means:
    with targets 0 every live channel adds to v(S), so the game is strictly monotone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():
            self.bn.bias.fill_(1.0)
            self.fc.weight.copy_(torch.stack([torch.ones(6), -torch.ones(6)]))
            self.fc.bias.zero_()
            for c in (1, 4):  # dead channels
                self.conv.weight[c] = 0
                self.bn.weight[c] = 0
                self.bn.bias[c] = 0

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def test_snpfi_utilization_keeps_every_useful_channel(small_batch):
    torch.manual_seed(0)
    model = MonotoneNet().eval()
    group = PruningSpace.build(model, small_batch[:2])["conv"]
    game = LayerGame(model, group, small_batch, torch.zeros(len(small_batch), dtype=torch.long))
    assert game.mode == "fx"
    importance = exact_shapley(game).values
    live = [0, 2, 3, 5]
    assert (importance[live] > 1e-3).all() and (importance[[1, 4]].abs() < 1e-12).all()
    curve = utilization_curve(game, importance)
    assert curve[0] == 0.0 and curve[-1] == 1.0
    assert (curve[1:5] > curve[:4]).all() and (curve[:4] < 1).all()  # rising while live channels join
    assert torch.allclose(curve[4:], torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert snpfi_sparsity(game, importance, tau=1.0) == pytest.approx(2 / 6)  # only the dead go
    assert snpfi_sparsity(game, importance, tau=0.95) >= 2 / 6
    assert snpfi_sparsity(game, importance, tau=1e-6) == pytest.approx(5 / 6)  # min_keep = 1


# ------------------------------------------------------------------------------- SNPFI
def test_utilization_curve_and_sparsity_on_an_additive_game():
    weights = [0.0, 3.0, 0.0, 1.0, 2.0]
    game = FunctionGame(5, lambda s: sum(weights[i] for i in s))
    importance = exact_shapley(game).values
    assert torch.allclose(importance, torch.tensor(weights, dtype=torch.float64))
    curve = utilization_curve(game, importance)
    assert torch.allclose(curve, torch.tensor([0, 3 / 6, 5 / 6, 1, 1, 1], dtype=torch.float64))
    assert snpfi_sparsity(game, importance, tau=1.0) == pytest.approx(2 / 5)
    assert snpfi_sparsity(game, importance, tau=0.8) == pytest.approx(3 / 5)
    assert snpfi_sparsity(game, importance) == pytest.approx(2 / 5)  # tau = 0.95
    flat = FunctionGame(3, lambda s: 1.0)  # a layer that does not matter keeps one channel
    assert snpfi_sparsity(flat, torch.zeros(3)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="tau"):
        snpfi_sparsity(game, importance, tau=1.5)


def test_interaction_index_exact_on_toy_games():
    three = FunctionGame(3, lambda s: float(len(s) == 3))  # unanimity of all three
    assert exact_interaction(three, 0, 1) == pytest.approx(0.5)
    four = FunctionGame(4, lambda s: float({0, 1, 2} <= s))
    assert exact_interaction(four, 0, 1) == pytest.approx(0.5)  # 1 / (|T| - 1)
    assert exact_interaction(four, 0, 3) == pytest.approx(0.0)
    # a hand-written brute force on a non-symmetric game
    v = {s: (len(s) ** 1.5 + 2.0 * (0 in s) * (2 in s) - (1 in s) * (3 in s) * (0 in s)) for s in map(frozenset, itertools.chain.from_iterable(itertools.combinations(range(4), k) for k in range(5)))}
    game = FunctionGame(4, v.__getitem__)
    from math import factorial
    for i, j in itertools.combinations(range(4), 2):
        rest = [k for k in range(4) if k not in (i, j)]
        brute = sum(
            factorial(len(s)) * factorial(4 - len(s) - 2) / factorial(3)
            * (v[frozenset(s) | {i, j}] - v[frozenset(s) | {i}] - v[frozenset(s) | {j}] + v[frozenset(s)])
            for k in range(3) for s in itertools.combinations(rest, k)
        )
        assert exact_interaction(game, i, j) == pytest.approx(brute)
        _, sampled = pairwise_interactions(game, [(i, j)], samples=3000, seed=i * 4 + j)
        assert float(sampled[0]) == pytest.approx(brute, abs=0.08)


def test_mean_interaction():
    additive = FunctionGame(5, lambda s: float(sum(s)))
    assert mean_interaction(additive, samples=4) == 0.0
    four = FunctionGame(4, lambda s: float({0, 1, 2} <= s))
    exact_mean = np.mean([exact_interaction(four, i, j) for i, j in itertools.combinations(range(4), 2)])
    assert mean_interaction(four, samples=2000, seed=1) == pytest.approx(exact_mean, abs=0.03)
    assert mean_interaction(four, samples=8, seed=3) == mean_interaction(four, samples=8, seed=3)
    pairs, values = pairwise_interactions(four, 2, samples=4, seed=0)
    assert len(pairs) == 2 == len(values) and len(set(pairs)) == 2

