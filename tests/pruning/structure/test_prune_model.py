"""Physical channel removal (prune_model) on the traced groups.

The central checks compare a pruned model with its plan (every producer, BatchNorm and consumer
has exactly the planned width), with the original's weights (the kept rows are the
highest-scoring ones, the same set in every producer of a group) and with a masked original
(zeroing the removed channels of the original gives the pruned model's outputs).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning.structure import PruningError, PruningSpace, count_macs, is_depthwise, prune_model

#: every model the ``model_space`` fixture builds
MODELS = ("tiny_resnet", "tiny_cnn", "resnet20", "mobilenet_v1", "vgg16", "alexnet_cifar")


def random_scores(space: PruningSpace, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.rand(grp.size, generator=g) for grp in space.groups}


def random_keep(space: PruningSpace, seed: int = 0, low: float = 0.2, high: float = 0.8) -> dict[str, int]:
    """A non-uniform plan: each group keeps a different fraction in [1 - high, 1 - low]."""
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for grp in space.groups:
        ratio = low + (high - low) * float(torch.rand(1, generator=g))
        keep[grp.name] = max(1, grp.size - round(ratio * grp.size))
    return keep


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"


def assert_planned_widths(space: PruningSpace, original: nn.Module, pruned: nn.Module, keep) -> None:
    """Every producer / norm / consumer of every group has exactly the planned width."""
    before = dict(original.named_modules())
    after = dict(pruned.named_modules())
    for group in space.groups:
        k = keep.get(group.name, group.size)
        for name in group.producers:
            m = after[name]
            if isinstance(m, nn.Linear):
                assert m.out_features == k == m.weight.shape[0], name
            else:
                assert m.out_channels == k == m.weight.shape[0], name
                if is_depthwise(before[name]):  # follows its producer: one filter per kept channel
                    assert m.groups == m.in_channels == k, name
            if m.bias is not None:
                assert m.bias.shape == (k,), name
        for name in group.norms:
            m = after[name]
            assert m.num_features == k, name
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                assert t.shape == (k,), name
        for name in group.consumers:
            m, orig = after[name], before[name]
            if isinstance(m, nn.Linear):
                per_channel = orig.in_features // group.size  # a flatten of C x H x W
                assert m.in_features == k * per_channel == m.weight.shape[1], name
            else:
                assert not is_depthwise(orig), name
                assert m.in_channels == k == m.weight.shape[1] * m.groups, name


def _index(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(dim, idx)


def expected_weights(space, original, kept) -> dict[str, torch.Tensor]:
    """The original weights of every Conv2d/Linear, cut to the kept rows and input columns."""
    out_group = {p: g for g in space.groups for p in g.producers}
    in_group = {c: g for g in space.groups for c in g.consumers}
    expected = {}
    for name, m in original.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach()
        g = out_group.get(name)
        if g is not None and g.name in kept:
            w = _index(w, 0, kept[g.name])
        g = in_group.get(name)
        if g is not None and g.name in kept:
            idx = kept[g.name]
            if isinstance(m, nn.Linear):
                per = m.in_features // g.size
                idx = (idx[:, None] * per + torch.arange(per)).flatten()
            w = _index(w, 1, idx)
        expected[name] = w
    return expected


def masked_copy(space, original, kept) -> nn.Module:
    """The original with every removed channel zeroed at its source (producer rows and BN)."""
    masked = copy.deepcopy(original)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for g in space.groups:
            if g.name not in kept:
                continue
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[kept[g.name]] = False
            for name in (*g.producers, *g.norms):
                m = modules[name]
                m.weight[removed] = 0
                if m.bias is not None:
                    m.bias[removed] = 0
    return masked


def _prune(model_space, name: str, keep, seed: int = 0):
    model, x, space = model_space(name)
    scores = random_scores(space, seed)
    pruned, kept = prune_model(model, x, space, keep, scores)
    return model, x, space, scores, pruned, kept


# ---------------------------------------------------------------------------------------------
# channel counts are exactly as planned


@pytest.mark.parametrize("name", MODELS)
def test_pruned_widths_are_exactly_as_planned(name, model_space):
    model, x, space = model_space(name)
    keep = random_keep(space, seed=1)
    assert any(keep[g.name] < g.size for g in space.groups)
    before = state_copy(model)
    _, _, _, scores, pruned, kept = _prune(model_space, name, keep)
    assert_planned_widths(space, model, pruned, keep)
    # the analytic MAC model agrees exactly with the MACs measured on the pruned model
    assert count_macs(pruned, x) == pytest.approx(space.macs(keep), abs=0.5)
    assert count_macs(model, x) == space.base_macs
    out = pruned(x)
    assert out.shape == model(x).shape  # classifier outputs never shrink
    assert torch.isfinite(out).all()
    assert_state_equal(model, before)  # the original is untouched


@pytest.mark.parametrize("name", MODELS)
def test_kept_channels_are_the_highest_scoring_in_every_producer(name, model_space):
    model, x, space = model_space(name)
    keep = random_keep(space, seed=2)
    _, _, _, scores, pruned, kept = _prune(model_space, name, keep, seed=5)
    for g in space.groups:
        if keep[g.name] == g.size:
            assert g.name not in kept
            continue
        top = torch.topk(scores[g.name], keep[g.name]).indices.sort().values
        assert torch.equal(kept[g.name], top)
    after = dict(pruned.named_modules())
    for layer, w in expected_weights(space, model, kept).items():
        assert torch.equal(after[layer].weight, w), layer
    before = dict(model.named_modules())
    for g in space.groups:  # BN statistics and biases follow the same channels
        for norm in g.norms:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                expected = getattr(before[norm], attr).detach()[kept[g.name]] if g.name in kept else getattr(before[norm], attr)
                assert torch.equal(getattr(after[norm], attr), expected), (norm, attr)
        for p in g.producers:
            if before[p].bias is not None and g.name in kept:
                assert torch.equal(after[p].bias, before[p].bias.detach()[kept[g.name]]), p


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_cnn", "resnet20", "mobilenet_v1", "alexnet_cifar"])
def test_pruned_model_computes_the_masked_original(name, model_space):
    """Removing channels equals zeroing them in the original: right channels, right coupling."""
    model, x, space = model_space(name)
    keep = random_keep(space, seed=3)
    _, _, _, _, pruned, kept = _prune(model_space, name, keep, seed=4)
    masked = masked_copy(space, model, kept)
    with torch.no_grad():
        expected, got, full = masked(x), pruned(x), model(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert not torch.allclose(got, full, rtol=1e-3, atol=1e-3)  # pruning did change something


# ---------------------------------------------------------------------------------------------
# ratio 0 is a no-op


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_cnn", "resnet20", "mobilenet_v1"])
def test_full_width_plan_is_bit_identical(name, model_space):
    model, x, space = model_space(name)
    before = state_copy(model)
    for keep in ({}, {g.name: g.size for g in space.groups}):
        pruned, kept = prune_model(model, x, space, keep, scores={})
        assert kept == {}
        assert pruned is not model
        with torch.no_grad():
            assert torch.equal(pruned(x), model(x))
        assert_state_equal(pruned, before)
    assert_state_equal(model, before)


def test_original_model_untouched_in_train_mode_with_mixed_modes(tiny_resnet, example_input):
    """Tracing and pruning a model in train mode must not move its BN statistics or modes."""
    model = tiny_resnet.train()
    model.layer1.bn1.eval()  # e.g. a frozen BN inside a model being fine-tuned
    before = state_copy(model)
    space = PruningSpace.build(model, example_input)
    pruned, _ = prune_model(model, example_input, space, random_keep(space), random_scores(space))
    assert_state_equal(model, before)
    modes = {n: m.training for n, m in model.named_modules()}
    assert modes.pop("layer1.bn1") is False and all(modes.values())
    assert pruned.training and not pruned.layer1.bn1.training


# ---------------------------------------------------------------------------------------------
# groups, residual coupling and strategies


def test_resnet20_residual_group_pruned_consistently(model_space):
    model, x, space = model_space("resnet20")
    keep = {"conv1": 10, "layer2.0.conv2": 20, "layer3.0.conv2": 40}
    _, _, _, scores, pruned, kept = _prune(model_space, "resnet20", keep, seed=7)
    after = dict(pruned.named_modules())
    for g in space.groups:
        if g.name in keep:
            widths = {after[p].out_channels for p in g.producers}
            assert widths == {keep[g.name]}, g.name
    # the whole stage runs at the residual width; block-internal widths are untouched
    for s, width in ((1, 10), (2, 20), (3, 40)):
        for b in range(3):
            assert after[f"layer{s}.{b}.conv2"].out_channels == width
            assert after[f"layer{s}.{b}.conv1"].out_channels == (16, 32, 64)[s - 1]
            assert after[f"layer{s}.{b}.bn2"].num_features == width
    assert pruned.fc.in_features == 40 and pruned.fc.out_features == 10
    # the same channel set in every producer: each producer's rows are the original's kept rows
    before = dict(model.named_modules())
    for p in space["conv1"].producers:
        w = before[p].weight.detach().index_select(0, kept["conv1"])
        if p != "conv1":
            assert after[p].weight.shape[1] == before[p].weight.shape[1]  # its inputs are inner
        assert torch.equal(after[p].weight, w), p
    masked = masked_copy(space, model, kept)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), rtol=1e-4, atol=1e-4)


def test_inner_plan_leaves_every_residual_width_unchanged(model_space):
    model, x, space = model_space("resnet20")
    keep = {g.name: g.size // 2 for g in space.select("inner")}
    _, _, _, _, pruned, _ = _prune(model_space, "resnet20", keep)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    changed = {
        n for n, m in after.items()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
        and (getattr(m, "weight").shape != before[n].weight.shape)
    }
    expected = set()
    for g in space.select("inner"):
        expected |= {*g.producers, *g.norms, *g.consumers}
    assert changed == expected
    for g in space.groups:
        if not g.inner:
            for n in (*g.producers, *g.norms):
                assert after[n].weight.shape[0] == g.size, n
    for s in (1, 2, 3):
        for b in range(3):
            conv1, conv2 = after[f"layer{s}.{b}.conv1"], after[f"layer{s}.{b}.conv2"]
            width = (16, 32, 64)[s - 1]
            assert conv1.out_channels == width // 2 == conv2.in_channels
            assert conv2.out_channels == width
            assert conv1.in_channels == ((16, 16, 32)[s - 1] if b == 0 else width)  # the residual stream


def test_alexnet_hidden_linears_are_groups_and_flatten_consumer_scales(model_space):
    model, x, space = model_space("alexnet_cifar")
    assert space.classifier == "classifier.4"
    names = [g.name for g in space.groups]
    assert names[-2:] == ["classifier.0", "classifier.2"]
    assert space["features.10"].consumers == ("classifier.0",)
    keep = {"features.10": 100, "classifier.0": 300, "classifier.2": 7}
    _, _, _, _, pruned, _ = _prune(model_space, "alexnet_cifar", keep)
    c = pruned.classifier
    assert (c[0].in_features, c[0].out_features) == (400, 300)  # 100 channels x 2 x 2
    assert (c[2].in_features, c[2].out_features) == (300, 7)
    assert (c[4].in_features, c[4].out_features) == (7, 10)
    assert pruned(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# classifier and errors


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1", "vgg16", "alexnet_cifar"])
def test_classifier_outputs_never_shrink(name, model_space):
    model, x, space = model_space(name)
    classifier = dict(model.named_modules())[space.classifier]
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 10
    assert space.call_order[-1] == space.classifier
    assert all(space.classifier not in g.producers for g in space.groups)
    # the most aggressive plan the engine accepts still keeps every class
    keep = {g.name: 1 for g in space.groups}
    _, _, _, _, pruned, _ = _prune(model_space, name, keep)
    assert dict(pruned.named_modules())[space.classifier].out_features == 10
    assert pruned(x).shape == (2, 10)
    with pytest.raises(PruningError, match="unknown prunable layer"):
        space[space.classifier]


def test_impossible_plans_raise_one_line_errors(model_space):
    model, x, space = model_space("tiny_resnet")
    scores = random_scores(space)
    with pytest.raises(PruningError, match="cannot keep 0 of 8"):
        prune_model(model, x, space, {"conv1": 0}, scores)
    with pytest.raises(PruningError, match="cannot keep 9 of 8"):
        prune_model(model, x, space, {"conv1": 9}, scores)
    with pytest.raises(PruningError, match="needs 8 scores"):
        prune_model(model, x, space, {"conv1": 4}, {})
    with pytest.raises(PruningError, match="needs 8 scores"):
        prune_model(model, x, space, {"conv1": 4}, {"conv1": torch.rand(7)})
    with pytest.raises(PruningError, match="unknown prunable layer"):
        prune_model(model, x, space, {"bogus": 1}, scores)
