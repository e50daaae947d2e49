"""Shapley for pruning: the bounded ``kl`` worth, the stratified calibration batch and the
boundary stop rule (pruning.games, the ``shapley`` criterion's options)."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.tasks import Classification
from pruning.games import (
    GameSettings,
    BoundaryStop,
    FunctionGame,
    LayerGame,
    RunningStats,
    ShapleyOptions,
    block_merge,
    calibration_batch,
    estimate_block,
    estimate_shapley,
    shapley_blocks,
)
from pruning.structure import PruningSpace


def clear_cut_game() -> FunctionGame:
    """Four strong players, four null ones: the cut at 50% is clear. A three-way bonus among the
    strong players makes their marginals vary from permutation to permutation, so their
    standard errors shrink slowly although they are far above the cut."""
    weights = [5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0]

    def worth(s: frozenset[int]) -> float:
        return sum(weights[i] for i in s) + 6.0 * ({0, 1, 2} <= s)

    return FunctionGame(8, worth)


def test_boundary_rule_stops_earlier_than_the_max_stderr_rule_and_keeps_the_right_set():
    common = dict(max_permutations=512, batch_permutations=8, truncation=None, antithetic=False)
    boundary = estimate_shapley(clear_cut_game(), ShapleyOptions(boundary=0.5, **common), seed=0)
    stderr = estimate_shapley(clear_cut_game(), ShapleyOptions(epsilon=0.05, **common), seed=0)
    assert boundary.permutations == 8  # the first block: min_samples reached, cut already clear
    assert boundary.permutations < stderr.permutations
    kept = set(torch.argsort(boundary.values, descending=True)[:4].tolist())
    assert kept == {0, 1, 2, 3}


def test_boundary_rule_waits_while_intervals_overlap_the_cut():
    stats = RunningStats.zeros(4)
    for x in ([3.0, 1.0, 1.2, 0.0], [3.0, 1.4, 0.8, 0.0], [3.0, 0.6, 1.0, 0.0], [3.0, 1.0, 1.0, 0.0]):
        stats.update(torch.tensor(x))
    span = 4.0  # a channel share is 1
    rule = BoundaryStop(0.5)  # keep 2: player 0 and the better of players 1, 2 (tied within noise)
    assert not rule.reached(stats, span)
    overlap = rule.overlap(stats, span)
    assert 0 < overlap < 1
    assert BoundaryStop(0.5, margin=overlap).reached(stats, span)  # interchangeable within the margin
    assert BoundaryStop(0.25).reached(stats, span)  # keep 3: player 3 is clearly last
    assert not BoundaryStop(0.25, min_samples=5).reached(stats, span)  # too few samples to trust


def test_block_merge_applies_the_boundary_stop_like_the_in_process_estimator():
    options = ShapleyOptions(boundary=0.5, max_permutations=64, batch_permutations=8, truncation=None, antithetic=False)
    game = clear_cut_game()
    plan = shapley_blocks(options, 0, "g")
    merge = block_merge(options, len(plan))
    for k, (count, seed) in enumerate(plan):
        merge.add(k, estimate_block(game, options, count, seed))
    assert merge.converged and merge.merged == 1 < len(plan)


def test_kl_is_zero_for_the_full_coalition_and_never_positive(tiny_resnet, predicted_game):
    game = predicted_game(tiny_resnet, "layer1.conv1", value="kl")
    full, empty = game.endpoints()
    assert abs(full) < 1e-9 and full <= 0.0
    masks = torch.rand(32, game.size, generator=torch.Generator().manual_seed(0)) < 0.5
    values = game.values(masks)
    assert (values <= 0.0).all() and empty < 0.0
    # no labels: other targets give the same worth
    other = LayerGame(tiny_resnet, game.group, game.inputs, (game.targets + 1) % 10, GameSettings(value="kl"))
    assert torch.equal(other.values(masks), values)


def test_kl_value_bounds_and_reference_required():
    logits = torch.randn(5, 4, 3)
    reference = torch.log_softmax(logits[0], dim=-1)
    values = Classification().game_value(logits, torch.zeros(4, dtype=torch.long), "kl", reference)
    assert values[0] == 0.0 and (values <= 0.0).all()
    with pytest.raises(ValueError, match="reference"):
        Classification().game_value(logits, torch.zeros(4, dtype=torch.long), "kl")


def labelled_batches(counts: dict[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    labels = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)  # image i holds i
    return [(images[:7], labels[:7]), (images[7:], labels[7:])]


def test_stratified_batch_has_equal_counts_per_class_and_is_seeded():
    batches = labelled_batches({0: 9, 1: 5, 2: 12})
    x, y = calibration_batch(batches, 12, stratified=True, seed=3)
    assert torch.bincount(y).tolist() == [4, 4, 4]
    everything = torch.cat([b[0] for b in batches]).flatten()
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(labels[x.flatten().long()], y)  # each image comes with its own label
    again = calibration_batch(batches, 12, stratified=True, seed=3)
    other = calibration_batch(batches, 12, stratified=True, seed=4)
    assert torch.equal(again[0], x) and not torch.equal(other[0], x)
    assert len(set(x.flatten().tolist())) == 12 and set(x.flatten().tolist()) <= set(everything.tolist())
    first = calibration_batch(batches, 12)  # the default stays the first images
    assert torch.equal(first[0].flatten(), everything[:12])
    uneven = calibration_batch(batches, 13, stratified=True, seed=3)[1]
    assert sorted(torch.bincount(uneven).tolist()) == [4, 4, 5]


def test_stratified_batch_refuses_a_class_with_too_few_images():
    with pytest.raises(InputError, match="class 1 has 5 calibration images, needs 6"):
        calibration_batch(labelled_batches({0: 9, 1: 5, 2: 12}), 18, stratified=True)


@pytest.mark.parametrize("options, message", [
    (dict(boundary=1.0), "boundary must be a pruned fraction in \\(0, 1\\) or None, got 1.0"),
    (dict(boundary=0.0), "got 0.0"),
    (dict(boundary=0.5, epsilon=0.1), "give epsilon or boundary, not both"),
    (dict(boundary_z=0.0), "boundary_z must be > 0, got 0.0"),
    (dict(boundary_margin=-0.1), "boundary_margin must be >= 0, got -0.1"),
    (dict(value="kld"), "unknown value 'kld'; valid: accuracy, distill, kl, logprob, loss, margin"),
])
def test_option_validation(options, message):
    with pytest.raises(InputError, match=message):
        ShapleyOptions(**options)
    with pytest.raises(InputError, match=message):
        create_criterion("shapley", **options)


@pytest.mark.parametrize("options, message", [
    (dict(prune_ratio=1.0), "prune_ratio must be in \\(0, 1\\), got 1.0"),
    (dict(prune_ratio=0.5, z=-1.0), "z must be > 0, got -1.0"),
    (dict(prune_ratio=0.5, min_samples=1), "min_samples must be >= 2, got 1"),
    (dict(prune_ratio=0.5, margin=-1.0), "margin must be >= 0, got -1.0"),
])
def test_boundary_stop_validation(options, message):
    with pytest.raises(ValueError, match=message):
        BoundaryStop(**options)


def test_criterion_scores_with_kl_stratified_and_boundary(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 10)]
    context = ScoringContext(calibration=batches)
    criterion = create_criterion("shapley", value="kl", stratified=True, batch_size=10, boundary=0.5,
                                 max_permutations=64)
    scores = criterion.score(tiny_resnet, space.groups, context)
    for group in space.groups:
        assert scores[group.name].shape == (group.size,) and torch.isfinite(scores[group.name]).all()
        assert criterion.last_report[group.name]["permutations"] <= 64
    again = create_criterion("shapley", value="kl", stratified=True, batch_size=10, boundary=0.5,
                             max_permutations=64).score(tiny_resnet, space.groups, context)
    assert all(torch.equal(scores[name], again[name]) for name in scores)
