"""Entropy statistics: layer-shared quantile edges, the Miller-Madow estimator, the per-map
spatial-softmax entropy, their merging and their option errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.statistics import (
    StatsOptions,
    ActivationStats,
    accumulate_stats,
    collect_activation_stats,
    compute_histogram_edges,
    histogram_entropy,
    map_softmax_entropy,
)
from pruning.structure import ChannelGroup, ObservedOutput, PruningSpace


def identity_group(channels: int) -> ChannelGroup:
    return ChannelGroup(
        name="0", size=channels, producers=("0",), consumers=(), norms=(),
        observed=(ObservedOutput("0", "0", False),), inner=True,
    )


def scaled_copies(scales: list[float]) -> tuple[nn.Module, ChannelGroup]:
    """A 1x1 conv whose output channel c is scales[c] x the single input channel."""
    model = nn.Sequential(nn.Conv2d(1, len(scales), 1, bias=False))
    model[0].weight.data = torch.tensor(scales)[:, None, None, None]
    return model, identity_group(len(scales))


def varied_batches(n: int = 4) -> list[tuple[torch.Tensor, None]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 1, 4, 4, generator=g), None) for _ in range(n)]


def test_layer_edges_rank_a_scaled_down_copy_below_the_original():
    model, group = scaled_copies([1.0, 0.0625])  # a power of two: the copy is exactly scaled
    batches = varied_batches()
    shared = collect_activation_stats(model, [group], batches, StatsOptions(bins=16, rank=False))
    assert torch.equal(shared.layers["0"].edges[0], shared.layers["0"].edges[1])  # one range for the layer
    entropy = shared.channel_entropy(group)
    assert entropy[1] < entropy[0] - 1.0  # the weak copy fills a few bins of the layer's range
    # per-channel edges are blind to scale: the two copies have the same histogram
    per_channel = collect_activation_stats(model, [group], batches,
                                           StatsOptions(bins=16, rank=False, edge_scope="channel"))
    assert torch.equal(per_channel.layers["0"].hist[0], per_channel.layers["0"].hist[1])


def test_quantile_edges_come_from_several_batches_and_outliers_fall_in_end_bins():
    model, group = scaled_copies([1.0, 2.0])
    batches = varied_batches(3)
    batches[2][0][0, 0, 0, 0] = 1e6  # one outlier in the last edge batch
    edges = compute_histogram_edges(model, [group], batches, StatsOptions(bins=8, edge_quantile=0.02))["0"]
    gap = torch.cat([x.mean((2, 3)) * torch.tensor([1.0, 2.0]) for x, _ in batches]).flatten().double()
    lo, hi = torch.quantile(gap, 0.02), torch.quantile(gap, 0.98)
    pad = 0.01 * (hi - lo)
    torch.testing.assert_close(edges[:, [0, -1]].double(), torch.stack([lo - pad, hi + pad]).expand(2, 2),
                               rtol=1e-6, atol=1e-6)
    stats = accumulate_stats(model, [group], batches, {"0": edges}, StatsOptions(rank=False))
    assert int(stats.layers["0"].hist[:, -1].sum()) >= 2  # the outlier's image, in both channels
    # min-max edges (quantile 0) are stretched by the outlier: nearly everything lands in bin 0
    stretched = collect_activation_stats(model, [group], batches, StatsOptions(bins=8, rank=False, edge_quantile=0.0))
    assert int(stretched.layers["0"].hist[:, 0].sum()) >= 2 * 96 - 2


@pytest.mark.parametrize("edge_scope", ["layer", "channel"])
def test_shards_merge_exactly_with_either_edges(edge_scope, tiny_resnet, example_input, calibration_batches):
    groups = PruningSpace.build(tiny_resnet, example_input).groups
    x, y = calibration_batches[0]
    batches = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    edges = compute_histogram_edges(tiny_resnet, groups, batches[:2], StatsOptions(edge_scope=edge_scope))
    whole = accumulate_stats(tiny_resnet, groups, batches, edges, StatsOptions(rank=False, map_entropy=True))
    merged = accumulate_stats(tiny_resnet, groups, batches[:1], edges,
                              StatsOptions(rank=False, map_entropy=True)).merge(
        accumulate_stats(tiny_resnet, groups, batches[1:], edges, StatsOptions(rank=False, map_entropy=True))
    )
    for name, s in whole.layers.items():
        m = merged.layers[name]
        assert torch.equal(s.hist, m.hist), name
        torch.testing.assert_close(s.map_entropy_sum, m.map_entropy_sum, rtol=1e-12, atol=1e-12)
    # the default pass computes the same edges from the same first batches
    default = collect_activation_stats(tiny_resnet, groups, batches,
                                       StatsOptions(rank=False, edge_batches=2, edge_scope=edge_scope))
    assert all(torch.equal(default.layers[n].edges, edges[n]) for n in edges)


def test_miller_madow_is_plugin_plus_occupied_bins_over_2n():
    hist = torch.tensor([[2, 2, 0, 0], [4, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [5, 3, 1, 0]])
    plugin = histogram_entropy(hist)
    occupied = torch.tensor([2, 1, 4, 0, 3], dtype=torch.float64)
    n = torch.tensor([4, 4, 4, 0, 9], dtype=torch.float64)
    expected = plugin + torch.where(n > 0, (occupied - 1).clamp_min(0) / (2 * n.clamp_min(1)), 0.0)
    corrected = histogram_entropy(hist, estimator="miller-madow")
    torch.testing.assert_close(corrected, expected)
    assert corrected[0] == pytest.approx(math.log(2) + 1 / 8)
    assert corrected[1] == 0 and corrected[3] == 0  # one occupied bin / no counts: no correction


def test_channel_entropy_reads_the_estimator():
    model, group = scaled_copies([1.0, 0.3])
    stats = collect_activation_stats(model, [group], varied_batches(), StatsOptions(bins=8, rank=False))
    hist = stats.layers["0"].hist
    torch.testing.assert_close(stats.channel_entropy(group, estimator="miller-madow"),
                               histogram_entropy(hist, estimator="miller-madow"))
    torch.testing.assert_close(stats.channel_entropy(group), histogram_entropy(hist))


def test_map_softmax_entropy_by_hand():
    # softmax of [0, 0, 0, log 3] is [1, 1, 1, 3] / 6
    maps = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])[None, None]
    h = -(3 * (1 / 6) * math.log(1 / 6) + 0.5 * math.log(0.5))
    assert map_softmax_entropy(maps).item() == pytest.approx(h, rel=1e-6)
    assert map_softmax_entropy(torch.zeros(1, 1, 3, 5)).item() == pytest.approx(math.log(15))  # flat map: maximum
    assert map_softmax_entropy(torch.ones(2, 3, 1, 1)).abs().max() == 0  # one position

    # end to end: two images through the identity, mean over images
    model, group = scaled_copies([1.0])
    images = torch.stack([maps[0], torch.zeros(1, 2, 2)])
    stats = collect_activation_stats(model, [group], [(images, None)], StatsOptions(rank=False, map_entropy=True))
    assert stats.channel_map_entropy(group).item() == pytest.approx((h + math.log(4)) / 2, rel=1e-6)


def test_map_entropies_only_when_asked_and_files_say_what_is_missing(tmp_path):
    model, group = scaled_copies([1.0, 0.5])
    stats = collect_activation_stats(model, [group], varied_batches(1), StatsOptions(rank=False))
    with_maps = collect_activation_stats(model, [group], varied_batches(1), StatsOptions(rank=False, map_entropy=True))
    assert stats.layers["0"].map_entropy_sum is None and with_maps.layers["0"].map_entropy_sum is not None
    torch.testing.assert_close(stats.layers["0"].hist, with_maps.layers["0"].hist)  # nothing else changes
    stats.save(tmp_path / "stats.pt")
    loaded = ActivationStats.load(tmp_path / "stats.pt")
    assert not loaded.map_entropy
    torch.testing.assert_close(loaded.channel_entropy(group), stats.channel_entropy(group))
    with pytest.raises(InputError, match="map entropies were not collected.*--map-entropy"):
        loaded.channel_map_entropy(group)
    with pytest.raises(InputError, match="collected differently"):
        stats.merge(with_maps)


@pytest.mark.parametrize("options, needle", [
    ({"edge_scope": "global"}, "unknown edge_scope 'global'; valid: layer, channel"),
    ({"edge_quantile": 0.5}, r"edge_quantile must be in \[0, 0.5\), got 0.5"),
    ({"edge_quantile": -0.1}, r"edge_quantile must be in \[0, 0.5\), got -0.1"),
    ({"edge_batches": 0}, "edge_batches must be at least 1, got 0"),
    ({"bins": 1}, "bins must be at least 2"),
])
def test_bad_edge_options(options, needle):
    model, group = scaled_copies([1.0])
    with pytest.raises(InputError, match=needle) as info:
        collect_activation_stats(model, [group], varied_batches(1), StatsOptions(**options))
    assert "\n" not in str(info.value)


def test_bad_estimator():
    with pytest.raises(InputError, match="unknown entropy estimator 'mle'; valid: plugin, miller-madow"):
        histogram_entropy(torch.ones(1, 3), estimator="mle")
