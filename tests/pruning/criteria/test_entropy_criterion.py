"""The entropy criterion (FPEI): its value modes, estimators and option errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.criteria.entropy import EntropyOptions
from pruning.errors import InputError
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import ChannelGroup, ObservedOutput, PruningSpace


def copies(scales: list[float]) -> tuple[nn.Module, ChannelGroup]:
    """A 1x1 conv whose output channel c is scales[c] x the single input channel."""
    model = nn.Sequential(nn.Conv2d(1, len(scales), 1, bias=False))
    model[0].weight.data = torch.tensor(scales)[:, None, None, None]
    group = ChannelGroup(
        name="0", size=len(scales), producers=("0",), consumers=(), norms=(),
        observed=(ObservedOutput("0", "0", False),), inner=True,
    )
    return model, group


def batches(n: int = 4) -> list[tuple[torch.Tensor, None]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 1, 4, 4, generator=g), None) for _ in range(n)]


def test_defaults_are_plugin_histogram_entropy():
    assert EntropyOptions() == EntropyOptions(value="histogram", estimator="plugin")
    model, group = copies([1.0, 0.5, 0.0625])
    stats = collect_activation_stats(model, [group], batches(), StatsOptions(bins=16, rank=False))
    scores = create_criterion("entropy").score(model, [group], ScoringContext(stats=stats))["0"]
    torch.testing.assert_close(scores, stats.channel_entropy(group).float())
    corrected = create_criterion("entropy", estimator="miller-madow").score(model, [group], ScoringContext(stats=stats))
    torch.testing.assert_close(corrected["0"], stats.channel_entropy(group, estimator="miller-madow").float())
    assert not torch.equal(corrected["0"], scores)
    # layer-shared edges (the statistics' default): the weaker the copy, the lower its score
    assert scores[0] > scores[1] > scores[2]


def test_map_softmax_scores_by_hand():
    model, group = copies([1.0, 2.0])
    # softmax of [0, 0, 0, log 3] is [1, 1, 1, 3] / 6; channel 1 sees the map doubled: [1, 1, 1, 9] / 12
    image = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])[None, None]
    stats = collect_activation_stats(model, [group], [(image, None)], StatsOptions(rank=False, map_entropy=True))
    h0 = -(3 * (1 / 6) * math.log(1 / 6) + 0.5 * math.log(0.5))
    h1 = -(3 * (1 / 12) * math.log(1 / 12) + 0.75 * math.log(0.75))
    scores = create_criterion("entropy", value="map-softmax").score(model, [group], ScoringContext(stats=stats))["0"]
    torch.testing.assert_close(scores, torch.tensor([math.log(4) - h0, math.log(4) - h1]), rtol=1e-6, atol=1e-6)
    assert scores[1] > scores[0]  # the more peaked map is kept


def test_map_softmax_prunes_a_dead_channel_first(tiny_resnet, example_input, calibration_batches):
    with torch.no_grad():  # layer1.conv1 channel 5: BN output exactly 0, a flat map
        tiny_resnet.layer1.conv1.weight[5] = 0
        tiny_resnet.layer1.bn1.running_mean[5] = 0
        tiny_resnet.layer1.bn1.bias[5] = 0
    space = PruningSpace.build(tiny_resnet, example_input)
    criterion = create_criterion("entropy", value="map-softmax")
    assert statistics_options([criterion]).map_entropy
    stats = collect_activation_stats(tiny_resnet, space.groups, calibration_batches, statistics_options([criterion],
                                     StatsOptions(rank=False)))
    scores = criterion.score(tiny_resnet, space.groups, ScoringContext(stats=stats))
    layer = scores["layer1.conv1"]
    assert layer[5].abs() < 1e-6 and (layer[torch.arange(8) != 5] > 1e-4).all()
    assert all(torch.isfinite(s).all() and s.dtype == torch.float32 for s in scores.values())


@pytest.mark.parametrize("options, needle", [
    ({"value": "spatial"}, "unknown entropy value 'spatial'; valid: histogram, map-softmax"),
    ({"estimator": "jackknife"}, "unknown entropy estimator 'jackknife'; valid: plugin, miller-madow"),
])
def test_bad_options(options, needle):
    with pytest.raises(InputError, match=needle) as info:
        create_criterion("entropy", **options)
    assert "\n" not in str(info.value)


def test_unknown_option_lists_the_valid_ones():
    # the bins and edges belong to the statistics pass, not to the criterion
    with pytest.raises(TypeError, match="unknown option.s. bins; valid: seed, value, estimator"):
        create_criterion("entropy", bins=8)
