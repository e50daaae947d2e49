"""Grouped convolutions (1 < groups < channels) prune one channel per group at a time."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.resnet import Bottleneck, ResNet

from pruning.criteria import create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import PruningError, PruningSpace, UnitLayout, count_macs, prune_model


@pytest.fixture(scope="module")
def resnext():
    """A one-block-per-stage ResNeXt (torchvision's Bottleneck, 4 groups of 4 channels)."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=4).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, x, PruningSpace.build(model, x)


def test_groups_around_a_grouped_conv_have_units_of_its_groups(resnext):
    _, _, space = resnext
    assert space["layer1.0.conv1"].units == UnitLayout(blocks=4)
    assert space["layer1.0.conv2"].units == UnitLayout(blocks=4)
    assert space["layer1.0.conv3"].units == UnitLayout()


def test_pruned_resnext_meets_the_target_with_equal_groups(resnext):
    model, x, space = resnext
    outcome = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(flops_reduction=0.5), space=space)
    pruned = outcome.model
    assert pruned(x).shape == model(x).shape
    measured = count_macs(pruned, x)
    assert space.macs(outcome.keep) == measured
    assert abs(1 - measured / count_macs(model, x) - 0.5) <= 0.01
    conv = pruned.layer1[0].conv2
    assert conv.groups == 4 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert outcome.keep["layer1.0.conv2"] < space["layer1.0.conv2"].size


def test_each_group_keeps_the_same_offsets(resnext):
    """The kept output channels are the same offsets in every group, and the grouped conv's
    weights are the original ones at those rows and input offsets."""
    model, x, space = resnext
    keep = {"layer1.0.conv1": 8, "layer1.0.conv2": 12}
    scores = {n: torch.rand(space[n].size, generator=torch.Generator().manual_seed(2)) for n in keep}
    pruned, kept = prune_model(model, x, space, keep, scores)
    out_rows, in_rows = kept["layer1.0.conv2"], kept["layer1.0.conv1"]
    assert torch.equal(out_rows.view(4, -1) % 4, (out_rows[:3] % 4).expand(4, 3))
    local_inputs = in_rows[: len(in_rows) // 4]
    expected = model.layer1[0].conv2.weight[out_rows][:, local_inputs]
    assert torch.equal(pruned.layer1[0].conv2.weight, expected)
    assert pruned(x).shape == (2, 10)


def test_a_width_off_the_groups_is_refused(resnext):
    model, x, space = resnext
    with pytest.raises(PruningError, match=r"layer 'layer1.0.conv2': keeps channels in units of 4; cannot keep 10"):
        prune_model(model, x, space, {"layer1.0.conv2": 10}, {"layer1.0.conv2": torch.rand(16)})
