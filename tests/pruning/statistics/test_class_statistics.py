"""Per-class statistics (``per_class=True``) and the class-balanced scores of the activation criteria."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.errors import InputError
from pruning.statistics import (
    ActivationStats,
    StatsOptions,
    accumulate_stats,
    collect_activation_stats,
    compute_histogram_edges,
)
from pruning.structure import ChannelGroup, ObservedOutput, PruningSpace


@pytest.fixture
def labelled_batches():
    """Three batches of 6 images, labels 0..3 (label 3 only in the last batch)."""
    g = torch.Generator().manual_seed(3)
    labels = [torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 0, 0, 1]), torch.tensor([3, 0, 3, 1, 2, 3])]
    return [(torch.randn(6, 1, 28, 28, generator=g), y) for y in labels]


def groups_of(model):
    return PruningSpace.build(model, torch.zeros(2, 1, 28, 28)).groups


@pytest.mark.parametrize("model_name", ["tiny_resnet", "tiny_cnn"])
def test_each_class_row_equals_the_statistics_of_that_class_alone(model_name, request, labelled_batches):
    model = request.getfixturevalue(model_name)
    groups = groups_of(model)
    edges = compute_histogram_edges(model, groups, labelled_batches[:1], StatsOptions(bins=8))
    stats = accumulate_stats(model, groups, labelled_batches, edges, StatsOptions(rank_images=None, per_class=True))
    assert stats.per_class
    x = torch.cat([b[0] for b in labelled_batches])
    y = torch.cat([b[1] for b in labelled_batches])
    for k in range(4):
        alone = accumulate_stats(model, groups, [(x[y == k], y[y == k])], edges, StatsOptions(rank_images=None))
        for name, layer in stats.layers.items():
            one = alone.layers[name]
            assert int(layer.class_images[k]) == int(one.n_images)
            # float32 convolutions of a different batch composition: equal up to round-off
            torch.testing.assert_close(layer.class_sum[k], one.sum, rtol=1e-5, atol=1e-6)
            assert torch.equal(layer.class_zeros[k], one.zeros)
            if one.rank_sum is not None:
                assert torch.equal(layer.class_rank_sum[k], one.rank_sum)
                assert int(layer.class_rank_images[k]) == int(one.n_rank_images)


def test_shards_that_saw_different_labels_merge_into_one_pass(tiny_resnet, labelled_batches, tmp_path):
    """The first two batches never see label 3: the merge pads their rows."""
    groups = groups_of(tiny_resnet)
    edges = compute_histogram_edges(tiny_resnet, groups, labelled_batches[:1], StatsOptions(bins=8))
    first = accumulate_stats(tiny_resnet, groups, labelled_batches[:2], edges, StatsOptions(per_class=True))
    second = accumulate_stats(tiny_resnet, groups, labelled_batches[2:], edges,
                              StatsOptions(per_class=True), image_offset=12)
    whole = accumulate_stats(tiny_resnet, groups, labelled_batches, edges, StatsOptions(per_class=True))
    merged = first.merge(second)
    path = tmp_path / "stats.pt"
    merged.save(path)
    loaded = ActivationStats.load(path)
    assert loaded.config == whole.config
    for name, layer in whole.layers.items():
        assert next(iter(first.layers.values())).class_images.shape[0] == 3
        for field, value in layer.tensors().items():
            torch.testing.assert_close(loaded.layers[name].tensors()[field], value, rtol=1e-9, atol=1e-9)


def test_per_class_collection_needs_labelled_batches(tiny_cnn, labelled_batches):
    groups = groups_of(tiny_cnn)
    with pytest.raises(InputError, match="labelled batches"):
        collect_activation_stats(tiny_cnn, groups, [b[0] for b in labelled_batches], StatsOptions(per_class=True))
    with pytest.raises(InputError, match="non-negative"):
        collect_activation_stats(tiny_cnn, groups, [(labelled_batches[0][0], -labelled_batches[0][1])],
                                 StatsOptions(per_class=True))
    with pytest.raises(InputError, match="6 images but 5 labels"):
        collect_activation_stats(tiny_cnn, groups, [(labelled_batches[0][0], labelled_batches[0][1][:5])],
                                 StatsOptions(per_class=True))
    unlabelled = collect_activation_stats(tiny_cnn, groups, [b[0] for b in labelled_batches])
    with pytest.raises(InputError, match="per_class=True"):
        unlabelled.channel_mean(groups[0], class_scores="max")


def selective_channel_model():
    """A 1x1 conv on 2 input planes, ReLU after it: channel 0 copies plane 0 (a detector that fires,
    strongly and in a full-rank map, for class 1 only), channel 1 copies plane 1 (a weak, rank-2
    response to every image)."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    conv.weight.data = torch.eye(2)[:, :, None, None]
    model = nn.Sequential(conv, nn.ReLU())
    group = ChannelGroup(name="0", size=2, producers=("0",), consumers=(), norms=(),
                         observed=(ObservedOutput("0", "0", True),), inner=True)
    labels = torch.arange(10)
    x = torch.zeros(10, 2, 4, 4)
    x[labels == 1, 0] = 2.0 + 4.0 * torch.eye(4)  # the detector: mean 3 on class 1's image, 0 elsewhere
    x[:, 1] = 0.5            # the generalist: 0.5 on every image
    x[:, 1, 0, 0] = 0.0      # one zero per map, so its APoZ (1/16) is not that of the detector's class
    return model, group, [(x, labels)]


@pytest.mark.parametrize("criterion", ["mean-activation", "apoz", "hrank"])
def test_class_max_keeps_the_class_selective_channel_that_the_pooled_score_prunes(criterion):
    model, group, batches = selective_channel_model()
    stats = collect_activation_stats(model, [group], batches, StatsOptions(bins=4, per_class=True))
    context = ScoringContext(stats=stats)
    pooled = create_criterion(criterion).score(model, [group], context)["0"]
    balanced = create_criterion(criterion, class_scores="max").score(model, [group], context)["0"]
    assert pooled[0] < pooled[1]
    assert balanced[0] > balanced[1]
    if criterion == "mean-activation":
        torch.testing.assert_close(balanced, torch.tensor([3.0, 0.5 * 15 / 16]))
    if criterion == "apoz":
        torch.testing.assert_close(balanced, torch.tensor([1.0, 15 / 16]))
    if criterion == "hrank":
        torch.testing.assert_close(balanced, torch.tensor([4.0, 2.0]))


def test_class_scores_are_declared_by_the_criteria_that_have_them():
    assert statistics_options([create_criterion("apoz", class_scores="max")]).per_class
    assert not statistics_options([create_criterion("apoz")]).per_class
    with pytest.raises(InputError, match="no per-class scores.*apoz, hrank, mean-activation"):
        create_criterion("chip", class_scores="max")
    with pytest.raises(InputError, match="unknown class_scores 'min'; valid: pooled, max"):
        create_criterion("hrank", class_scores="min")
