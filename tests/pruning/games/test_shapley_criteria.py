"""The ``shapley`` and ``snpfi`` criteria (pruning.criteria) and their estimation hook."""
from __future__ import annotations

import pytest
import torch

from pruning.tasks import Classification

from pruning.criteria import ScoringContext, create_criterion
from pruning.games import GameSettings, LayerGame, block_merge, estimate_block, exact_shapley, shapley_blocks
from pruning.structure import PruningSpace


def test_shapley_criterion_exact_below_matches_exact(tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    group = space["layer1.conv1"]
    context = ScoringContext(calibration=calibration_batches)
    criterion = create_criterion("shapley", exact_below=8, batch_size=8, max_forward_passes=None)
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


class BlockEstimator:
    """A ShapleyEstimator that estimates every group here from its block plan (as the Ray
    estimator does on actors) and records which groups it was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, model, groups, calibration, options, seed, task):
        self.calls.append([g.name for g in groups])
        inputs, targets = options.game_batch(calibration, seed)
        out = {}
        for group in groups:
            game = LayerGame(model, group, inputs, targets, options.game_settings(task))
            plan = shapley_blocks(options, seed, group.name)
            merge = block_merge(options, len(plan))
            for k, (count, block_seed) in enumerate(plan):
                merge.add(k, estimate_block(game, options, count, block_seed))
            out[group.name] = merge.estimate()
        return out


def test_delegated_estimation_feeds_scores_sparsities_and_estimates(tiny_cnn, example_input, calibration_batches):
    groups = PruningSpace.build(tiny_cnn, example_input).groups
    context = ScoringContext(calibration=calibration_batches)
    snpfi = create_criterion("snpfi", seed=2, batch_size=8, max_permutations=4, batch_permutations=2)
    estimator = BlockEstimator()
    delegated = snpfi.delegate_estimation(estimator)
    assert delegated.name == "snpfi" and snpfi.estimator is None  # the original is left as it was

    scores, sparsity = delegated.score_and_sparsity(tiny_cnn, groups, context)
    assert estimator.calls == [[g.name for g in groups]]  # every group in one call
    expected = estimator(tiny_cnn, groups, calibration_batches, snpfi.options, snpfi.seed, Classification())
    for group in groups:
        assert torch.equal(scores[group.name], expected[group.name].values.float())
        assert 0.0 <= sparsity[group.name] <= 1 - 1 / group.size
        report = delegated.last_report[group.name]
        assert report["permutations"] == 4 and report["estimate_seconds"] is None
    assert delegated.layer_sparsity(tiny_cnn, groups, context) == sparsity
    names = [name for name, game, _ in delegated.estimates(tiny_cnn, groups, context)]
    assert names == [g.name for g in groups]
    # the in-process criterion draws all of a group's permutations from one stream instead
    assert not torch.equal(snpfi.score(tiny_cnn, groups[:1], context)[groups[0].name], scores[groups[0].name])
