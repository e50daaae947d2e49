"""Shapley channel importance (pruning.games) and SNPFI (pruning.games): the layer game's fx
downstream-only path against full forwards, exact enumeration, permutation sampling (efficiency,
agreement with exact values, determinism, truncation, antithetic pairs, Welford/Chan merging),
utilization strength and interaction indices, and the two registered criteria."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning.criteria import ScoringContext, create_criterion
from pruning.structure import PruningSpace
from pruning.games import (
    CoalitionGame,
    FunctionGame,
    LayerGame,
    RunningStats,
    all_coalitions,
    exact_shapley,
    permutation_shapley,
)
from pruning.games import (
    exact_interaction,
    mean_interaction,
    pairwise_interactions,
    snpfi_sparsity,
    utilization_curve,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """The suite shares a small machine: one intra-op thread is faster and steadier here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_batch():
    """12x12 images keep every forward cheap (the tiny models pool adaptively)."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 1, 12, 12, generator=g)


def _game(model, name, inputs, **kwargs) -> LayerGame:
    """The game of group ``name`` with the model's own predictions as targets (so the full
    layer is the best coalition, as for a trained model on its training distribution)."""
    space = PruningSpace.build(model, inputs[:2])
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    return LayerGame(model, space[name], inputs, targets, **kwargs)


# ------------------------------------------------------------------------------ the game
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
        fx = LayerGame(model, group, inputs, targets, mode="auto", max_batch=48)
        hooks = LayerGame(model, group, inputs, targets, mode="hooks", max_batch=48)
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
        LayerGame(model, group, small_batch, targets, mode="fx")
    plain = LayerGame(tiny_cnn, PruningSpace.build(tiny_cnn, small_batch[:2])["features.7"], small_batch, targets)
    masks = torch.rand(5, group.size, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.allclose(game.values(masks), plain.values(masks), atol=1e-5, rtol=0)


def test_values_count_cost_and_leave_the_model_alone(tiny_resnet, small_batch):
    tiny_resnet.train()
    game = _game(tiny_resnet, "layer2.conv1", small_batch, max_batch=64)
    assert game.chunk == 4
    before = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    game.values(torch.ones(10, game.size, dtype=torch.bool))
    assert game.coalitions == 10 and game.evaluations == 10 * len(small_batch) and game.forwards == 3
    assert tiny_resnet.training and all(m.training for m in tiny_resnet.modules())
    assert all(not m._forward_hooks for m in tiny_resnet.modules())
    assert all(torch.equal(before[k], v) for k, v in tiny_resnet.state_dict().items())


def test_value_functions(tiny_resnet, small_batch):
    game = _game(tiny_resnet, "layer2.conv1", small_batch, value="accuracy")
    assert game.endpoints()[0] == 1.0  # the targets are the full model's predictions
    margin = _game(tiny_resnet, "layer2.conv1", small_batch, value="margin")
    assert margin.endpoints()[0] >= 0
    with pytest.raises(ValueError, match="logprob"):
        _game(tiny_resnet, "layer2.conv1", small_batch, value="neg_ce")


# ------------------------------------------------------------------------- estimators
@pytest.fixture
def layer1_game(tiny_resnet, small_batch) -> LayerGame:
    return _game(tiny_resnet, "layer1.conv1", small_batch)


def test_exact_shapley_is_efficient_and_limited(layer1_game):
    exact = exact_shapley(layer1_game)
    v_full, v_empty = layer1_game.endpoints()
    assert exact.evaluations == 2**8 and exact.permutations == 0
    assert exact.v_full == pytest.approx(v_full, abs=1e-6) and exact.v_empty == pytest.approx(v_empty, abs=1e-6)
    assert float(exact.values.sum()) == pytest.approx(exact.v_full - exact.v_empty, abs=1e-10)
    with pytest.raises(ValueError, match="10"):
        exact_shapley(FunctionGame(11, len))


def test_exact_shapley_on_toy_games():
    # unanimity game of {0, 1, 2} among 4 players: 1/3 each, nothing for player 3
    unanimity = FunctionGame(4, lambda s: float({0, 1, 2} <= s))
    assert torch.allclose(exact_shapley(unanimity).values, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0], dtype=torch.float64))
    additive = FunctionGame(5, lambda s: sum(2.0**i for i in s))
    assert torch.allclose(exact_shapley(additive).values, 2.0 ** torch.arange(5, dtype=torch.float64))


@pytest.mark.parametrize("antithetic", [False, True])
def test_every_permutation_is_efficient(layer1_game, antithetic):
    for count in (2, 6):
        est = permutation_shapley(layer1_game, max_permutations=count, antithetic=antithetic, batch_permutations=4)
        assert est.permutations == count
        assert float(est.values.sum()) == pytest.approx(est.v_full - est.v_empty, abs=1e-10)
    single = permutation_shapley(layer1_game, max_permutations=1)
    assert float(single.values.sum()) == pytest.approx(single.v_full - single.v_empty, abs=1e-10)
    assert single.evaluations == 2 + 7


def test_permutation_estimate_matches_exact(layer1_game):
    exact = exact_shapley(layer1_game).values
    est = permutation_shapley(layer1_game, max_permutations=160, batch_permutations=40, seed=1)
    z = (est.values - exact).abs() / est.stderr
    assert torch.isfinite(est.stderr).all() and (est.stderr > 0).all()
    assert (z > 3.5).sum() <= 1, z  # allow one outlier among 8
    assert float(z.max()) < 5
    assert est.evaluations == 2 + 160 * 7


def test_determinism_and_epsilon_stop(layer1_game):
    a = permutation_shapley(layer1_game, max_permutations=12, antithetic=True, seed=7)
    b = permutation_shapley(layer1_game, max_permutations=12, antithetic=True, seed=7)
    c = permutation_shapley(layer1_game, max_permutations=12, antithetic=True, seed=8)
    assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.values, c.values)
    loose = permutation_shapley(layer1_game, max_permutations=400, epsilon=1.0, batch_permutations=4)
    assert loose.permutations == 4  # two samples suffice for a standard error below 1 nat


def test_welford_and_chan_merge_equal_one_pass():
    rng = np.random.default_rng(0)
    samples = torch.from_numpy(rng.normal(size=(37, 5)) * np.arange(1, 6))
    whole = RunningStats.zeros(5)
    whole.update_many(samples)
    first, second = RunningStats.zeros(5), RunningStats.zeros(5)
    first.update_many(samples[:15])
    second.update_many(samples[15:])
    merged = first.merge(second)
    assert torch.allclose(merged.n, whole.n)
    assert torch.allclose(merged.mean, whole.mean, atol=1e-12)
    assert torch.allclose(merged.m2, whole.m2, atol=1e-10)
    assert torch.allclose(whole.mean, samples.mean(0), atol=1e-12)
    assert torch.allclose(whole.variance(), samples.var(0), atol=1e-10)
    assert torch.allclose(RunningStats.zeros(5).merge(whole).mean, whole.mean)


def test_estimates_from_shards_merge(layer1_game):
    a = permutation_shapley(layer1_game, max_permutations=6, seed=1)
    b = permutation_shapley(layer1_game, max_permutations=10, seed=2)
    merged = a.merge(b)
    assert merged.permutations == 16 and merged.evaluations == a.evaluations + b.evaluations
    assert torch.allclose(merged.values, (6 * a.values + 10 * b.values) / 16, atol=1e-12)
    assert float(merged.values.sum()) == pytest.approx(a.v_full - a.v_empty, abs=1e-10)


def test_truncation_saves_evaluations():
    # a saturating game: any three of the first four players already reach v(N)
    weights = [1.0, 1.0, 1.0, 1.0, 0.02, 0.01, 0.01, 0.0]
    game = FunctionGame(8, lambda s: min(3.0, sum(weights[i] for i in s)))
    full = permutation_shapley(game, max_permutations=64, seed=0)
    tmc = permutation_shapley(game, max_permutations=64, truncation_tol=1e-9, truncation_window=1, seed=0)
    assert tmc.evaluations < 0.8 * full.evaluations
    assert torch.allclose(tmc.values, full.values, atol=1e-12)  # the tail marginals are 0 anyway
    coarse = permutation_shapley(game, max_permutations=64, truncation_tol=0.05, seed=0)
    assert abs(float(coarse.values.sum()) - 3.0) <= 0.05


def test_truncation_on_a_layer_game(layer1_game):
    v_full, v_empty = layer1_game.endpoints()
    plain = permutation_shapley(layer1_game, max_permutations=16, antithetic=True, seed=3)
    tmc = permutation_shapley(
        layer1_game, max_permutations=16, antithetic=True, truncation_tol=0.1 * abs(v_full - v_empty), seed=3
    )
    assert tmc.evaluations < plain.evaluations
    assert abs(float(tmc.values.sum()) - (v_full - v_empty)) <= 0.1 * abs(v_full - v_empty) + 1e-12


def test_antithetic_pairs_reduce_variance():
    # for v(S) = (sum of weights)^2 a permutation's and its reverse's marginals average to w_i * W
    w = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    game = FunctionGame(6, lambda s: sum(w[i] for i in s) ** 2)
    plain = permutation_shapley(game, max_permutations=32, seed=0)
    paired = permutation_shapley(game, max_permutations=32, antithetic=True, seed=0)
    expected = torch.tensor(w, dtype=torch.float64) * sum(w)
    assert torch.allclose(paired.values, expected, atol=1e-9)
    assert float(paired.stderr.max()) < 1e-6 < float(plain.stderr.min())


def test_dead_channel_has_zero_shapley_value(tiny_resnet, small_batch):
    with torch.no_grad():  # a zero filter whose BN outputs 0: the channel carries nothing
        for c in (2, 5):
            tiny_resnet.layer1.conv1.weight[c] = 0
            tiny_resnet.layer1.bn1.weight[c] = 0
            tiny_resnet.layer1.bn1.bias[c] = 0
    game = _game(tiny_resnet, "layer1.conv1", small_batch)
    exact = exact_shapley(game).values
    est = permutation_shapley(game, max_permutations=8, antithetic=True)
    scale = float(exact.abs().max())
    assert scale > 1e-4
    for c in (2, 5):
        assert abs(float(exact[c])) < 1e-9 * max(1.0, scale)
        assert abs(float(est.values[c])) < 1e-9 * max(1.0, scale)

    curve = utilization_curve(game, exact)
    assert curve[0] == 0.0 and curve[-1] == 1.0 and len(curve) == 9


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


def test_layer_games_satisfy_the_protocol(layer1_game):
    assert isinstance(layer1_game, CoalitionGame) and isinstance(FunctionGame(2, len), CoalitionGame)
    assert all_coalitions(3).sum(0).tolist() == [4, 4, 4]


# ----------------------------------------------------------------------------- criteria
def test_shapley_criterion_exact_below_matches_exact(tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    group = space["layer1.conv1"]
    context = ScoringContext(calibration=calibration_batches)
    criterion = create_criterion("shapley", exact_below=8, batch_size=8)
    scores = criterion.score(tiny_resnet, [group], context)[group.name]
    inputs = torch.cat([x for x, _ in calibration_batches])[:8]
    targets = torch.cat([y for _, y in calibration_batches])[:8]
    exact = exact_shapley(LayerGame(tiny_resnet, group, inputs, targets)).values.float()
    assert torch.allclose(scores, exact, atol=1e-6)
    assert criterion.last_report[group.name]["mode"] == "fx"


def test_snpfi_layer_sparsity(tiny_cnn, example_input, calibration_batches):
    space = PruningSpace.build(tiny_cnn, example_input)
    context = ScoringContext(calibration=calibration_batches)
    snpfi = create_criterion("snpfi", batch_size=8, max_permutations=4)
    scores, sparsity = snpfi.score_and_sparsity(tiny_cnn, space.groups, context)
    assert set(sparsity) == {g.name for g in space.groups} == set(scores)
    for group in space.groups:
        assert 0.0 <= sparsity[group.name] <= 1 - 1 / group.size
    assert snpfi.layer_sparsity(tiny_cnn, space.groups, context) == sparsity
    strict = snpfi.layer_sparsity(tiny_cnn, space.groups, context, tau=1.0)
    assert all(strict[name] <= sparsity[name] for name in sparsity)  # a higher tau keeps more
    with pytest.raises(TypeError, match="value"):
        create_criterion("snpfi", value="accuracy")
    with pytest.raises(ValueError, match="tau"):
        create_criterion("snpfi", tau=0.0)
