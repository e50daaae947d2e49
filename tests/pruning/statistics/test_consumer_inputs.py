"""Statistics of the tensors a residual group's consumers read (``read_inputs``, ``source``)."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.errors import InputError
from pruning.statistics import ActivationStats, StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace

STATISTICS_CRITERIA = ["entropy", "hrank", "apoz", "mean-activation", "chip"]


def test_residual_groups_read_the_inputs_of_their_conv_consumers_once_per_tensor(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    stem = space["conv1"]  # conv1 + layer1.conv2 share the 8-channel residual stream
    assert not stem.inner
    # layer2.conv1 and layer2.shortcut.0 read the same tensor (layer1's output): one observation
    assert [(o.module, o.side) for o in stem.read] == [("layer1.conv1", "input"), ("layer2.conv1", "input")]
    assert [o.key for o in stem.read] == ["layer1.conv1:input", "layer2.conv1:input"]
    for group in space.groups:
        if group.inner:
            assert group.read == ()
            assert group.observations("consumer") == group.observed


def test_consumer_statistics_are_those_of_the_tensors_read(tiny_resnet, example_input, calibration_batches):
    """The consumer-side mean activation of the stem group is the mean over the two tensors the
    convolutions read: the stem's ReLU output and layer1's output after its residual addition."""
    space = PruningSpace.build(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, calibration_batches, StatsOptions(read_inputs=True))
    captured = {"stem": [], "block": []}
    handles = [
        tiny_resnet.layer1.conv1.register_forward_pre_hook(lambda m, i: captured["stem"].append(i[0])),
        tiny_resnet.layer1.register_forward_hook(lambda m, i, o: captured["block"].append(o)),
    ]
    try:
        with torch.no_grad():
            for x, _ in calibration_batches:
                tiny_resnet(x)
    finally:
        for h in handles:
            h.remove()
    means = [torch.cat(captured[k]).mean((0, 2, 3)).double() for k in ("stem", "block")]
    group = space["conv1"]
    torch.testing.assert_close(stats.channel_mean(group, source="consumer"), (means[0] + means[1]) / 2)
    # the producer side averages the stem output and layer1's pre-addition branch (bn2, no ReLU)
    assert not torch.allclose(stats.channel_mean(group, source="consumer"), stats.channel_mean(group))


def test_consumer_source_needs_read_inputs_and_old_files_have_none(tiny_resnet, example_input, calibration_batches,
                                                                   tmp_path):
    space = PruningSpace.build(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, calibration_batches, StatsOptions(rank=False))
    with pytest.raises(InputError, match="read_inputs=True"):
        stats.channel_mean(space["conv1"], source="consumer")
    inner = next(g for g in space.groups if g.inner)
    torch.testing.assert_close(stats.channel_mean(inner, source="consumer"), stats.channel_mean(inner))
    with pytest.raises(InputError, match="unknown statistics source 'both'"):
        stats.channel_mean(inner, source="both")
    with_inputs = collect_activation_stats(tiny_resnet, space.groups, calibration_batches,
                                           StatsOptions(rank=False, read_inputs=True))
    path = tmp_path / "stats.pt"
    with_inputs.save(path)
    assert ActivationStats.load(path).read_inputs
    with pytest.raises(InputError, match="collected differently"):
        stats.merge(with_inputs)


def test_entropy_reads_the_consumer_side_by_default_the_others_the_producers():
    assert create_criterion("entropy").source == "consumer"
    assert statistics_options([create_criterion("entropy")]).read_inputs
    assert all(create_criterion(name).source == "producer" for name in STATISTICS_CRITERIA if name != "entropy")


@pytest.mark.parametrize("name", STATISTICS_CRITERIA)
def test_statistics_criteria_score_the_consumer_side(name, tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    producer = create_criterion(name, source="producer")
    consumer = create_criterion(name, source="consumer")
    assert statistics_options([consumer]).read_inputs and not statistics_options([producer]).read_inputs
    assert statistics_options([consumer]).chip == (name == "chip")
    stats = collect_activation_stats(tiny_resnet, space.groups, calibration_batches,
                                     statistics_options([producer, consumer]))
    context = ScoringContext(calibration=calibration_batches, stats=stats)
    a = producer.score(tiny_resnet, space.groups, context)
    b = consumer.score(tiny_resnet, space.groups, context)
    for group in space.groups:
        assert b[group.name].shape == (group.size,) and torch.isfinite(b[group.name]).all()
        if group.inner:
            assert torch.equal(a[group.name], b[group.name])
    with pytest.raises(InputError, match="unknown statistics source"):
        create_criterion(name, source="branch")
