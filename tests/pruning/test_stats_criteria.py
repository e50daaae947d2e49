"""Criteria on activation statistics (entropy, hrank, chip, apoz, mean-activation) and the
information-concentration layer weights."""
from __future__ import annotations

import pytest
import torch

from pruning.errors import InputError
from pruning.planning import concentration_weights, information_concentration, layer_indicators
from pruning.criteria import ScoringContext, create_criterion
from pruning.structure import PruningSpace
from pruning.statistics import StatsOptions, collect_activation_stats

STATS_CRITERIA = ["entropy", "hrank", "chip", "apoz", "mean-activation"]


@pytest.fixture
def small_batches(calibration_batches):
    x, y = calibration_batches[0]
    return [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]


def kill_channel(model, c: int) -> None:
    """layer1.conv1 channel c: BN output exactly 0, so the post-ReLU map is constant 0."""
    with torch.no_grad():
        model.layer1.conv1.weight[c] = 0
        model.layer1.bn1.running_mean[c] = 0
        model.layer1.bn1.bias[c] = 0


def duplicate_channel(model, src: int, dst: int) -> None:
    """layer2.conv1 channel dst := channel src (filter and every BN parameter)."""
    with torch.no_grad():
        model.layer2.conv1.weight[dst] = model.layer2.conv1.weight[src]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(model.layer2.bn1, name)[dst] = getattr(model.layer2.bn1, name)[src]


@pytest.mark.parametrize("model_name", ["tiny_resnet", "tiny_cnn"])
def test_scores_follow_the_contract(model_name, request, example_input, small_batches):
    model = request.getfixturevalue(model_name)
    space = PruningSpace.build(model, example_input)
    stats = collect_activation_stats(model, space.groups, small_batches, StatsOptions(chip=True, read_inputs=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in STATS_CRITERIA:
        criterion = create_criterion(name)
        assert criterion.needs_stats
        scores = criterion.score(model, space.groups, ScoringContext(stats=stats))
        assert scores.keys() == {g.name for g in space.groups}
        for group in space.groups:
            s = scores[group.name]
            assert s.shape == (group.size,) and s.dtype == torch.float32, (name, group.name)
            assert torch.isfinite(s).all(), (name, group.name)
        again = criterion.score(model, space.groups, ScoringContext(stats=stats))
        assert all(torch.equal(scores[k], again[k]) for k in scores)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dead_channel_is_ranked_lowest(tiny_resnet, example_input, small_batches):
    kill_channel(tiny_resnet, 5)
    space = PruningSpace.build(tiny_resnet, example_input)
    context = ScoringContext(stats=collect_activation_stats(tiny_resnet, space.groups, small_batches,
                                                            StatsOptions(read_inputs=True)))
    for name in ("entropy", "hrank", "apoz", "mean-activation"):
        scores = create_criterion(name).score(tiny_resnet, space.groups, context)["layer1.conv1"]
        assert scores[5] == 0, name
        assert int(torch.argmin(scores)) == 5, name
        if name != "entropy":  # with layer-shared edges a weak live channel may fill one bin too
            assert (scores[torch.arange(8) != 5] > 0).all(), name


def test_duplicated_channel_loses_chip_independence(example_input, small_batches):
    """Duplicating channel 0 into channel 1 must lower channel 0's independence below what it
    was with channel 1 dead (trace-sqrt concavity: a second copy adds less than the first).

    A duplicate does not score ~0 in general: for a row orthogonal to the others each copy
    scores (sqrt 2 - 1) x its norm (see test_stats.test_duplicate_orthogonal_row_independence).
    """
    from tiny_models import TinyResNet, with_random_bn_stats

    def chip_scores(make_dup: bool):
        torch.manual_seed(0)
        model = with_random_bn_stats(TinyResNet(), 0)
        with torch.no_grad():
            if make_dup:
                duplicate_channel(model, 0, 1)
            else:
                model.layer2.conv1.weight[1] = 0
                model.layer2.bn1.running_mean[1] = 0
                model.layer2.bn1.bias[1] = 0
        space = PruningSpace.build(model, example_input)
        groups = [space["layer2.conv1"]]
        stats = collect_activation_stats(model, groups, small_batches, StatsOptions(rank=False, chip=True))
        return create_criterion("chip").score(model, groups, ScoringContext(stats=stats))["layer2.conv1"]

    dead, dup = chip_scores(False), chip_scores(True)
    assert dead[1] == 0
    assert dup[0] == pytest.approx(float(dup[1]), rel=1e-5)  # the two copies are symmetric
    assert dup[0] < dead[0]


def test_missing_or_incomplete_stats_raise(tiny_resnet, example_input, small_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    for name in STATS_CRITERIA:
        with pytest.raises(InputError, match="statistics"):
            create_criterion(name).score(tiny_resnet, space.groups, ScoringContext())
        with pytest.raises(InputError, match="ActivationStats"):
            create_criterion(name).score(tiny_resnet, space.groups, ScoringContext(stats={"a": 1}))
    stats = collect_activation_stats(tiny_resnet, space.groups, small_batches[:1], StatsOptions(rank=False))
    with pytest.raises(InputError, match="collected without chip: collect them with `prunesweep stats --chip`"):
        create_criterion("chip").score(tiny_resnet, space.groups, ScoringContext(stats=stats))
    with pytest.raises(InputError, match="rank=True"):
        create_criterion("hrank").score(tiny_resnet, space.groups, ScoringContext(stats=stats))


@pytest.mark.parametrize("model_name", ["tiny_resnet", "tiny_cnn"])
def test_information_concentration(model_name, request, example_input, small_batches):
    model = request.getfixturevalue(model_name)
    space = PruningSpace.build(model, example_input)
    stats = collect_activation_stats(model, space.groups, small_batches)
    names = [g.name for g in space.groups]
    indicators = layer_indicators(stats, space.groups)
    assert all(0 <= r <= 1 for _, r in indicators.values())

    ic = information_concentration(stats, space.groups)
    assert list(ic) == names and all(0.0 <= v <= 1.0 for v in ic.values())

    def order(values):
        return sorted(names, key=lambda n: values[n])

    entropy_only = information_concentration(stats, space.groups, alpha=1.0)
    assert order(entropy_only) == order({n: e for n, (e, _) in indicators.items()})
    assert max(entropy_only.values()) == pytest.approx(1.0) and min(entropy_only.values()) < 1e-5
    rank_only = information_concentration(stats, space.groups, alpha=0.0)
    assert order(rank_only) == order({n: r for n, (_, r) in indicators.items()})

    weights = concentration_weights(stats, space.groups)
    assert all(0.0 <= w <= 1.0 for w in weights.values())
    assert all(weights[n] == pytest.approx(1 - ic[n]) for n in names)
    assert set(concentration_weights(stats, space.groups, temperature=0.0).values()) == {1.0}
    sharp = concentration_weights(stats, space.groups, temperature=2.0)
    assert all(sharp[n] == pytest.approx(weights[n] ** 2) for n in names)
    with pytest.raises(InputError, match="alpha must be in"):
        information_concentration(stats, space.groups, alpha=1.5)
    with pytest.raises(InputError, match="temperature must be >= 0"):
        concentration_weights(stats, space.groups, temperature=-1.0)


def test_concentration_of_equal_layers_is_uniform(tiny_resnet, example_input, small_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, small_batches)
    weights = concentration_weights(stats, space.groups[:1])
    assert list(weights.values()) == [pytest.approx(0.5)]


@pytest.mark.parametrize("name, options, flag", [
    ("chip", {}, "--chip"),
    ("entropy", {"value": "map-softmax"}, "--map-entropy"),
    ("mean-activation", {"source": "consumer"}, "--read-inputs"),
    ("apoz", {"class_scores": "max"}, "--per-class"),
])
def test_statistics_without_what_a_criterion_reads_are_refused_naming_the_flag(
        name, options, flag, tiny_resnet, example_input, small_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    context = ScoringContext(stats=collect_activation_stats(tiny_resnet, space.groups, small_batches,
                                                            StatsOptions(rank=False)))
    criterion = create_criterion(name, **options)
    with pytest.raises(InputError, match=f"criterion '{name}' reads were collected without .*`prunesweep stats .*{flag}"):
        criterion.score(tiny_resnet, space.groups, context)
