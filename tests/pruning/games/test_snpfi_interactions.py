"""SNPFI's interaction-aware utilization (pruning.games.snpfi) and the criterion's options."""
from __future__ import annotations

import itertools

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.games import (
    FunctionGame,
    PairSampling,
    exact_interaction,
    exact_shapley,
    interaction_order,
    interaction_utilization,
    snpfi_sparsity,
    sparsity_from_curve,
    utilization_curve,
)
from pruning.planning import PruningConfig
from pruning.structure import PruningSpace


def four_players(duplicates: bool) -> FunctionGame:
    """Players 0 and 1 worth 1 each, 2 worth 0.8, 3 worth 0.3; with ``duplicates`` 0 and 1 are
    the same filter (either one gives the 1, both together still 1)."""

    def worth(s):
        first = float(0 in s or 1 in s) if duplicates else float(0 in s) + float(1 in s)
        return first + 0.8 * (2 in s) + 0.3 * (3 in s)

    return FunctionGame(4, worth)


def test_duplicates_change_the_interaction_aware_curve_by_hand():
    game = four_players(duplicates=True)
    phi = exact_shapley(game).values
    assert torch.allclose(phi, torch.tensor([0.5, 0.5, 0.8, 0.3], dtype=torch.float64))
    assert exact_interaction(game, 0, 1) == pytest.approx(-1.0)
    # plain: Shapley order 2, 0, 1, 3 -- the duplicates sit together, the second adds nothing
    plain = utilization_curve(game, phi)
    assert torch.allclose(plain, torch.tensor([0, 0.8, 1.8, 1.8, 2.1], dtype=torch.float64) / 2.1)
    # by hand: m = phi - I/2 = 1, 1, 0.8, 0.3 -> take 0; then m_1 = 1 + I_01 = 0 -> 2, 3, then 1
    found = interaction_utilization(game, phi, PairSampling(window=4, exact=True), tau=0.95)
    assert found.order.tolist() == [0, 2, 3, 1]
    assert torch.allclose(found.curve, torch.tensor([0, 1.0, 1.8, 2.1, 2.1], dtype=torch.float64) / 2.1)
    assert (found.curve >= plain - 1e-12).all() and (found.curve > plain + 1e-6).any()  # U rises sooner
    assert sparsity_from_curve(plain, 0.95) == 0.0  # the plain curve keeps both copies
    assert sparsity_from_curve(found.curve, 0.95) == pytest.approx(0.25)  # the second copy goes
    # the sampled index of an exact duplicate is exactly -1 in every sample: same order
    sampled = interaction_utilization(game, phi, PairSampling(window=4, samples=3), tau=0.95)
    assert sampled.order.tolist() == [0, 2, 3, 1] and torch.equal(sampled.curve, found.curve)
    assert sampled.coalitions == 6 * 3 * 4 + 2 * 5


def test_without_duplicates_interactions_change_nothing():
    game = four_players(duplicates=False)  # additive: every I_ij = 0
    phi = exact_shapley(game).values
    found = interaction_utilization(game, phi, PairSampling(window=4, exact=True))
    assert torch.allclose(found.interactions, torch.zeros(6, dtype=torch.float64))
    assert torch.equal(found.curve, utilization_curve(game, phi))
    assert interaction_utilization(game, phi, PairSampling(window=0)).pairs == []  # off: the plain curve


def test_greedy_order_is_the_true_greedy_on_second_order_games():
    g = torch.Generator().manual_seed(3)
    n = 6
    a = torch.rand(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, generator=g, dtype=torch.float64).triu(1) * 0.4
    game = FunctionGame(n, lambda s: float(sum(a[i] for i in s) + sum(b[i, j] for i in s for j in s if i < j)))
    phi = exact_shapley(game).values
    pairs = list(itertools.combinations(range(n), 2))
    values = torch.tensor([exact_interaction(game, i, j) for i, j in pairs], dtype=torch.float64)
    assert torch.allclose(values, torch.tensor([float(b[i, j]) for i, j in pairs], dtype=torch.float64))
    chosen, expected = set(), []
    for _ in range(n):  # greedy on the true marginals v(S + i) - v(S)
        best = max((i for i in range(n) if i not in chosen),
                   key=lambda i: (game.fn(frozenset(chosen | {i})) - game.fn(frozenset(chosen)), -i))
        expected.append(best)
        chosen.add(best)
    assert interaction_order(phi, pairs, values).tolist() == expected
    assert interaction_order(phi, [], torch.zeros(0)).tolist() == torch.argsort(phi, descending=True, stable=True).tolist()
    with pytest.raises(ValueError, match="one interaction per pair"):
        interaction_order(phi, pairs, values[:2])


def test_window_is_centred_on_the_plain_cut():
    weights = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    game = FunctionGame(8, lambda s: sum(weights[i] for i in s))
    phi = torch.tensor(weights, dtype=torch.float64)
    found = interaction_utilization(game, phi, PairSampling(window=4, exact=True), tau=0.8)
    k = round((1 - sparsity_from_curve(utilization_curve(game, phi), 0.8)) * 8)
    assert found.plain_cut == k
    assert sorted({p for pair in found.pairs for p in pair}) == list(range(k - 2, k + 2))


def test_snpfi_criterion_interaction_and_budget_options(tiny_cnn, example_input, calibration_batches):
    space = PruningSpace.build(tiny_cnn, example_input)
    context = ScoringContext(calibration=calibration_batches)
    # no scoring budget: the curves are evaluated at every k, as snpfi_sparsity does
    plain = create_criterion("snpfi", batch_size=8, max_permutations=4, max_forward_passes=None)
    scores, sparsity = plain.score_and_sparsity(tiny_cnn, space.groups, context)
    off = create_criterion("snpfi", batch_size=8, max_permutations=4, max_forward_passes=None, interactions=0, budget="layer")
    off_scores, off_sparsity = off.score_and_sparsity(tiny_cnn, space.groups, context)
    assert off_sparsity == sparsity and all(torch.equal(off_scores[n], scores[n]) for n in scores)
    # the defaults are today's SNPFI: Shapley order, each layer at its own threshold
    today = {name: snpfi_sparsity(game, est.values, 0.95) for name, game, est in plain.estimates(tiny_cnn, space.groups, context)}
    assert today == sparsity
    inter = create_criterion("snpfi", batch_size=8, max_permutations=4, max_forward_passes=None, interactions=4, interaction_samples=2)
    i_scores, i_sparsity = inter.score_and_sparsity(tiny_cnn, space.groups, context)
    for group in space.groups:  # same values, reassigned along the greedy order
        assert torch.equal(i_scores[group.name].sort().values, scores[group.name].sort().values)
        assert 0.0 <= i_sparsity[group.name] <= 1 - 1 / group.size
        assert inter.last_utilization[group.name]["pairs"] == 6
    glob = create_criterion("snpfi", batch_size=8, max_permutations=4, max_forward_passes=None, budget="global")
    with pytest.raises(InputError, match="space"):
        glob.score_and_sparsity(tiny_cnn, space.groups, context)
    _, g_sparsity = glob.score_and_sparsity(tiny_cnn, space.groups, context, space=space,
                                         plan=PruningConfig(flops_reduction=0.4))
    keep = {g.name: g.size - round(g_sparsity[g.name] * g.size) for g in space.groups}
    assert space.reduction(keep) == pytest.approx(0.4, abs=0.01)
    with pytest.raises(InputError, match="unknown budget 'both'; valid: layer, global"):
        create_criterion("snpfi", budget="both")
    with pytest.raises(InputError, match="interactions must be an integer >= 0"):
        create_criterion("snpfi", interactions=-1)
    with pytest.raises(InputError, match="interaction_samples must be an integer >= 1"):
        create_criterion("snpfi", interaction_samples=0)
