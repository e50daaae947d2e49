"""Per-class games (``class_scores="max"``): a channel scores its largest Shapley value over the
classes of a stratified batch, so that one only a single class needs is not pruned first."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.games import FunctionGame, ShapleyOptions, calibration_batch, estimate_class_max, estimate_shapley
from pruning.structure import PruningSpace

EXACT = ShapleyOptions(exact_below=10, stratified=True, class_scores="max")


def additive(weights) -> FunctionGame:
    return FunctionGame(len(weights), lambda s: sum(weights[i] for i in s))


def test_class_max_is_each_players_largest_class_value_and_the_pooled_game_their_mean():
    # player 0 matters to class 0 only, player 1 to class 1 only, player 2 a little to both
    classes = [[4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]
    est = estimate_class_max([additive(w) for w in classes], EXACT, seed=0)
    assert est.values.tolist() == pytest.approx([4.0, 4.0, 1.0])
    pooled = estimate_shapley(additive([2.0, 2.0, 1.0]), EXACT, seed=0)  # the mean game
    assert pooled.values.tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert est.evaluations == 2 * 2**3 and est.v_full == pytest.approx(pooled.v_full)


def test_a_player_one_class_needs_outranks_one_every_class_needs_a_little():
    # pooled (the mean over 4 classes) the specialist scores 1.0 < 1.5; its class maximum is 4.0
    classes = [[4.0, 1.5]] + [[0.0, 1.5]] * 3
    pooled = estimate_shapley(additive([1.0, 1.5]), EXACT, seed=0).values
    best = estimate_class_max([additive(w) for w in classes], EXACT, seed=0).values
    assert pooled.argmax() == 1 and best.argmax() == 0


def test_the_criterion_scores_the_maximum_over_games_on_each_class_alone(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    groups = [g for g in space.groups if g.size <= 8]
    assert groups
    g = torch.Generator().manual_seed(2)
    calibration = [(torch.randn(30, 1, 28, 28, generator=g), torch.arange(30) % 3)]
    options = dict(value="kl", exact_below=8, batch_size=12, max_forward_passes=None)  # exact games: no cap
    scores = create_criterion("shapley", stratified=True, class_scores="max", seed=4, **options).score(
        tiny_resnet, groups, ScoringContext(calibration=calibration))
    x, y = calibration_batch(calibration, 12, stratified=True, seed=4)  # the batch the criterion drew
    per_class = [create_criterion("shapley", **options | {"batch_size": 4}).score(
        tiny_resnet, groups, ScoringContext(calibration=[(x[y == c], y[y == c])])) for c in range(3)]
    for group in groups:
        expected = torch.stack([s[group.name] for s in per_class]).amax(0)
        assert torch.allclose(scores[group.name], expected, atol=1e-6)


def test_class_scores_validation_and_no_distributed_estimation():
    with pytest.raises(InputError, match="unknown class_scores 'min'; valid: pooled, max"):
        ShapleyOptions(class_scores="min", stratified=True)
    with pytest.raises(InputError, match="class_scores 'max' needs stratified=True"):
        create_criterion("shapley", class_scores="max")
    criterion = create_criterion("shapley", class_scores="max", stratified=True)
    with pytest.raises(InputError, match="estimated in this process only"):
        criterion.delegate_estimation(lambda *args: {})
