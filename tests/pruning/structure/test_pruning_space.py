"""The pruning space: channel groups found on the dependency graph, residual coupling,
strategies, the classifier, call order and the analytic MAC model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.structure import (
    STRATEGIES,
    PruningError,
    PruningSpace,
    find_classifier,
    is_depthwise,
    select_kept_channels,
)


def test_resnet20_groups_and_residual_coupling(model_space):
    model, x, space = model_space("resnet20")
    residual = [g for g in space.groups if not g.inner]
    assert [g.name for g in residual] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert residual[0].producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert set(residual[1].producers) == {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"}
    assert set(residual[2].producers) == {"layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2"}
    assert "fc" in residual[2].consumers
    inner = [g for g in space.groups if g.inner]
    assert sorted(g.name for g in inner) == sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    assert all(g.producers == (g.name,) for g in inner)
    assert space.select("full") == space.groups
    assert space.select("inner") == tuple(inner)
    assert set(STRATEGIES) == {"full", "inner"}


def test_tiny_models_groups(model_space):
    _, _, res = model_space("tiny_resnet")
    assert {g.name: g.inner for g in res.groups} == {
        "conv1": False, "layer1.conv1": True, "layer2.conv1": True, "layer2.conv2": False,
    }
    assert set(res["layer2.conv2"].producers) == {"layer2.conv2", "layer2.shortcut.0"}
    _, _, cnn = model_space("tiny_cnn")
    assert [g.name for g in cnn.groups] == ["features.0", "features.7", "hidden"]
    assert cnn["features.0"].producers == ("features.0", "features.4")  # conv + its depthwise
    assert cnn["features.7"].consumers == ("hidden",)
    assert cnn["hidden"].consumers == ("fc",)


def test_mobilenet_depthwise_follows_its_producer(model_space):
    model, x, space = model_space("mobilenet_v1")
    modules = dict(model.named_modules())
    depthwise = [n for n, m in modules.items() if is_depthwise(m)]
    assert len(depthwise) == 13
    owner = {p: g for g in space.groups for p in g.producers}
    for n in depthwise:
        g = owner[n]  # in the group of the conv that feeds it, never its root nor a consumer
        assert g.name != n and not is_depthwise(modules[g.name])
        assert all(n not in other.consumers for other in space.groups)
        assert g.inner  # a depthwise conv does not make a group residual-coupled


class _DefinedOutOfOrder(nn.Module):
    """The head is defined first but called last; another Linear is defined last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.conv = nn.Conv2d(1, 4, 3)
        self.proj = nn.Linear(4, 6)

    def forward(self, x):
        return self.head(torch.relu(self.proj(self.conv(x).mean((2, 3)))))


def test_find_classifier_is_the_last_called_layer(tiny_cnn, example_input):
    x = torch.randn(2, 1, 8, 8)
    assert find_classifier(_DefinedOutOfOrder(), x) == "head"
    assert find_classifier(tiny_cnn, example_input) == "fc"  # not its hidden Linear
    space = PruningSpace.build(_DefinedOutOfOrder(), x)
    assert space.classifier == "head"
    assert "head" not in {p for g in space.groups for p in g.producers}
    assert [g.name for g in space.groups] == ["conv", "proj"]
    with pytest.raises(PruningError, match="no Conv2d or Linear"):
        find_classifier(nn.Sequential(nn.ReLU()), x)


def test_call_order_and_ignored_layers(model_space):
    model, x, space = model_space("resnet20")
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(space.call_order) == sorted(convs)
    assert space.call_order[0] == "conv1" and space.call_order[-1] == "fc"
    ignored = PruningSpace.build(model, x, ignored_layers=["layer1.0.conv1", "layer2.1.conv1"])
    names = {g.name for g in ignored.groups}
    assert names == {g.name for g in space.groups} - {"layer1.0.conv1", "layer2.1.conv1"}
    with pytest.raises(PruningError, match="unknown layer.*nope"):
        PruningSpace.build(model, x, ignored_layers=["nope"])


def test_macs_model(model_space):
    _, x, space = model_space("tiny_resnet")
    assert space.macs({}) == space.base_macs
    assert space.reduction({}) == 0.0
    assert space.reduction({g.name: g.size for g in space.groups}) == 0.0
    half = space.reduction({"layer1.conv1": 4})
    quarter = space.reduction({"layer1.conv1": 6})
    assert 0 < quarter < half and half == pytest.approx(2 * quarter)  # linear in each width
    assert space.reduction({g.name: 1 for g in space.groups}) > 0.9


def test_errors_name_the_valid_values(model_space):
    _, _, space = model_space("tiny_resnet")
    with pytest.raises(PruningError, match="valid: full, inner") as error:
        space.select("outer")
    assert isinstance(error.value, InputError)  # the CLI shows it as one line
    with pytest.raises(PruningError, match=r"unknown prunable layer 'fc'; valid: conv1, layer1.conv1"):
        space["fc"]


def test_select_kept_channels_and_is_depthwise():
    scores = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1])
    assert select_kept_channels(scores, 2).tolist() == [1, 3]
    assert select_kept_channels(scores, 3).tolist() == [1, 2, 3]
    assert select_kept_channels(torch.ones(4), 2).tolist() == [0, 1]  # ties: lower index
    assert is_depthwise(nn.Conv2d(8, 8, 3, groups=8))
    assert not is_depthwise(nn.Conv2d(8, 8, 3))
    assert not is_depthwise(nn.Conv2d(8, 8, 3, groups=2))
    assert not is_depthwise(nn.Conv2d(8, 16, 3, groups=8))  # a depthwise multiplier changes width
    assert not is_depthwise(nn.Linear(8, 8))
