"""Shapley estimators (pruning.games): exact enumeration, permutation sampling (efficiency,
agreement with exact values, determinism, truncation, antithetic pairs) and Welford/Chan merging."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning.games import (
    FunctionGame,
    PermutationSampling,
    RunningStats,
    exact_shapley,
    permutation_shapley,
    utilization_curve,
)


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
        est = permutation_shapley(layer1_game,
                                  PermutationSampling(max_permutations=count, antithetic=antithetic,
                                                      batch_permutations=4))
        assert est.permutations == count
        assert float(est.values.sum()) == pytest.approx(est.v_full - est.v_empty, abs=1e-10)
    single = permutation_shapley(layer1_game, PermutationSampling(max_permutations=1))
    assert float(single.values.sum()) == pytest.approx(single.v_full - single.v_empty, abs=1e-10)
    assert single.evaluations == 2 + 7


def test_permutation_estimate_matches_exact(layer1_game):
    exact = exact_shapley(layer1_game).values
    est = permutation_shapley(layer1_game, PermutationSampling(max_permutations=160, batch_permutations=40), seed=1)
    z = (est.values - exact).abs() / est.stderr
    assert torch.isfinite(est.stderr).all() and (est.stderr > 0).all()
    assert (z > 3.5).sum() <= 1, z  # allow one outlier among 8
    assert float(z.max()) < 5
    assert est.evaluations == 2 + 160 * 7


def test_determinism_and_epsilon_stop(layer1_game):
    a = permutation_shapley(layer1_game, PermutationSampling(max_permutations=12, antithetic=True), seed=7)
    b = permutation_shapley(layer1_game, PermutationSampling(max_permutations=12, antithetic=True), seed=7)
    c = permutation_shapley(layer1_game, PermutationSampling(max_permutations=12, antithetic=True), seed=8)
    assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.values, c.values)
    loose = permutation_shapley(layer1_game,
                                PermutationSampling(max_permutations=400, epsilon=1.0, batch_permutations=4))
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
    a = permutation_shapley(layer1_game, PermutationSampling(max_permutations=6), seed=1)
    b = permutation_shapley(layer1_game, PermutationSampling(max_permutations=10), seed=2)
    merged = a.merge(b)
    assert merged.permutations == 16 and merged.evaluations == a.evaluations + b.evaluations
    assert torch.allclose(merged.values, (6 * a.values + 10 * b.values) / 16, atol=1e-12)
    assert float(merged.values.sum()) == pytest.approx(a.v_full - a.v_empty, abs=1e-10)


def test_truncation_saves_evaluations():
    # a saturating game: any three of the first four players already reach v(N)
    weights = [1.0, 1.0, 1.0, 1.0, 0.02, 0.01, 0.01, 0.0]
    game = FunctionGame(8, lambda s: min(3.0, sum(weights[i] for i in s)))
    full = permutation_shapley(game, PermutationSampling(max_permutations=64), seed=0)
    tmc = permutation_shapley(game, PermutationSampling(max_permutations=64, truncation_tol=1e-9, truncation_window=1),
                              seed=0)
    assert tmc.evaluations < 0.8 * full.evaluations
    assert torch.allclose(tmc.values, full.values, atol=1e-12)  # the tail marginals are 0 anyway
    coarse = permutation_shapley(game, PermutationSampling(max_permutations=64, truncation_tol=0.05), seed=0)
    assert abs(float(coarse.values.sum()) - 3.0) <= 0.05


def test_truncation_on_a_layer_game(layer1_game):
    v_full, v_empty = layer1_game.endpoints()
    plain = permutation_shapley(layer1_game, PermutationSampling(max_permutations=16, antithetic=True), seed=3)
    tmc = permutation_shapley(layer1_game,
                              PermutationSampling(max_permutations=16, antithetic=True,
                                                  truncation_tol=0.1 * abs(v_full - v_empty)), seed=3)
    assert tmc.evaluations < plain.evaluations
    assert abs(float(tmc.values.sum()) - (v_full - v_empty)) <= 0.1 * abs(v_full - v_empty) + 1e-12


def test_antithetic_pairs_reduce_variance():
    # for v(S) = (sum of weights)^2 a permutation's and its reverse's marginals average to w_i * W
    w = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    game = FunctionGame(6, lambda s: sum(w[i] for i in s) ** 2)
    plain = permutation_shapley(game, PermutationSampling(max_permutations=32), seed=0)
    paired = permutation_shapley(game, PermutationSampling(max_permutations=32, antithetic=True), seed=0)
    expected = torch.tensor(w, dtype=torch.float64) * sum(w)
    assert torch.allclose(paired.values, expected, atol=1e-9)
    assert float(paired.stderr.max()) < 1e-6 < float(plain.stderr.min())


def test_dead_channel_has_zero_shapley_value(tiny_resnet, predicted_game):
    with torch.no_grad():  # a zero filter whose BN outputs 0: the channel carries nothing
        for c in (2, 5):
            tiny_resnet.layer1.conv1.weight[c] = 0
            tiny_resnet.layer1.bn1.weight[c] = 0
            tiny_resnet.layer1.bn1.bias[c] = 0
    game = predicted_game(tiny_resnet, "layer1.conv1")
    exact = exact_shapley(game).values
    est = permutation_shapley(game, PermutationSampling(max_permutations=8, antithetic=True))
    scale = float(exact.abs().max())
    assert scale > 1e-4
    for c in (2, 5):
        assert abs(float(exact[c])) < 1e-9 * max(1.0, scale)
        assert abs(float(est.values[c])) < 1e-9 * max(1.0, scale)

    curve = utilization_curve(game, exact)
    assert curve[0] == 0.0 and curve[-1] == 1.0 and len(curve) == 9

