"""The criterion contract (see ``pruning/criteria/_base.py``), checked for every registered
criterion on both tiny models, plus hand-checkable cases for each baseline criterion."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.criteria import (
    Criterion,
    ScoringContext,
    create_criterion,
    criterion_class,
    list_criteria,
    register_criterion,
    statistics_options,
)
from pruning.structure import PruningSpace
from pruning.structure import ChannelGroup

ALL_CRITERIA = list_criteria()
NEEDS_INPUTS = [
    name for name in ALL_CRITERIA
    if criterion_class(name).needs_calibration or criterion_class(name).needs_stats
]
# (model fixture, mode to put it in): a criterion that runs forward passes in train mode would
# move BatchNorm statistics, which the state_dict comparison then catches
MODELS = [("tiny_resnet", "train"), ("tiny_cnn", "eval")]


def _snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    return state, modes, flags


def _context(criterion: Criterion, model: nn.Module, space: PruningSpace, batches) -> ScoringContext:
    stats = None
    if criterion.needs_stats:
        try:
            from pruning.statistics import collect_activation_stats
        except ImportError:
            pytest.skip("pruning.statistics is not available yet")
        stats = collect_activation_stats(model, space.groups, batches, statistics_options([criterion]))
    return ScoringContext(calibration=batches, stats=stats)


@pytest.mark.parametrize("model_name, mode", MODELS)
@pytest.mark.parametrize("name", ALL_CRITERIA)
def test_criterion_contract(name, model_name, mode, request, example_input, calibration_batches):
    model = request.getfixturevalue(model_name)
    space = PruningSpace.build(model, example_input)
    model.train(mode == "train")
    next(model.parameters()).requires_grad_(False)  # a frozen layer must stay frozen
    first, second = create_criterion(name, seed=3), create_criterion(name, seed=3)
    context = _context(first, model, space, calibration_batches)
    # a criterion that declares it needs BatchNorm layers is only asked about groups that have them
    groups = [g for g in space.groups if g.norms or not getattr(first, "needs_norms", False)]
    state, modes, flags = _snapshot(model)

    scores = first.score(model, groups, context)
    again = second.score(model, groups, context)

    assert set(scores) == {g.name for g in groups}
    for group in groups:
        s = scores[group.name]
        assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.device.type == "cpu"
        assert s.shape == (group.size,), group.name
        assert torch.isfinite(s).all(), group.name
        assert torch.equal(s, again[group.name]), f"{group.name}: not reproducible"
    after_state, after_modes, after_flags = _snapshot(model)
    assert after_state.keys() == state.keys()
    assert all(torch.equal(state[k], after_state[k]) for k in state), "weights or buffers changed"
    assert after_modes == modes
    assert after_flags == flags
    assert all(p.grad is None for p in model.parameters()), "gradients left on the model"


@pytest.mark.parametrize("name", NEEDS_INPUTS)
def test_missing_inputs_raise(name, tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    with pytest.raises(InputError, match=name):
        create_criterion(name).score(tiny_resnet, space.groups, ScoringContext())


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(ValueError) as error:
        create_criterion("nope")
    assert all(name in str(error.value) for name in ALL_CRITERIA)


def test_unknown_option_raises_type_error():
    with pytest.raises(TypeError, match="frobnicate"):
        create_criterion("l1", frobnicate=1)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("l1")(type("Another", (Criterion,), {"score": lambda *args: {}}))


def _single_producer_group(space: PruningSpace, name: str) -> ChannelGroup:
    group = space[name]
    assert group.producers == (name,)  # the hand-made expectations below assume this
    return group


def test_random_depends_on_seed_and_not_on_group_order(tiny_resnet, example_input):
    groups = PruningSpace.build(tiny_resnet, example_input).groups
    seed0 = create_criterion("random", seed=0).score(tiny_resnet, groups, ScoringContext())
    seed1 = create_criterion("random", seed=1).score(tiny_resnet, groups, ScoringContext())
    reversed_ = create_criterion("random", seed=0).score(tiny_resnet, groups[::-1], ScoringContext())
    assert all(not torch.equal(seed0[g.name], seed1[g.name]) for g in groups)
    assert all(torch.equal(seed0[g.name], reversed_[g.name]) for g in groups)


def test_l1_ranks_zeroed_filter_lowest(tiny_resnet, example_input):
    group = _single_producer_group(PruningSpace.build(tiny_resnet, example_input), "layer1.conv1")
    with torch.no_grad():
        tiny_resnet.layer1.conv1.weight[3] = 0
    scores = create_criterion("l1").score(tiny_resnet, [group], ScoringContext())[group.name]
    assert scores.argmin() == 3 and scores[3] == 0
    expected = tiny_resnet.layer1.conv1.weight.detach().abs().sum((1, 2, 3))
    assert torch.allclose(scores, expected)


def test_l2_is_the_filter_norm(tiny_resnet, example_input):
    group = _single_producer_group(PruningSpace.build(tiny_resnet, example_input), "layer1.conv1")
    scores = create_criterion("l2").score(tiny_resnet, [group], ScoringContext())[group.name]
    expected = tiny_resnet.layer1.conv1.weight.detach().pow(2).sum((1, 2, 3)).sqrt()
    assert torch.allclose(scores, expected)


def test_bn_scale_ranks_zero_gamma_lowest(tiny_resnet, example_input):
    group = PruningSpace.build(tiny_resnet, example_input)["layer1.conv1"]
    assert group.norms == ("layer1.bn1",)
    with torch.no_grad():
        tiny_resnet.layer1.bn1.weight[2] = 0
        tiny_resnet.layer1.bn1.weight[5] *= -1  # the sign of gamma does not matter
    scores = create_criterion("bn-scale").score(tiny_resnet, [group], ScoringContext())[group.name]
    assert scores.argmin() == 2
    assert torch.allclose(scores, tiny_resnet.layer1.bn1.weight.detach().abs())


def test_bn_scale_without_batchnorm_names_the_layer(tiny_cnn, example_input):
    group = PruningSpace.build(tiny_cnn, example_input)["hidden"]
    assert group.norms == ()
    with pytest.raises(InputError, match=r"'hidden'.*another criterion"):
        create_criterion("bn-scale").score(tiny_cnn, [group], ScoringContext())


def test_fpgm_ranks_the_median_filter_lowest():
    # three 1x1 filters over two input channels: (2, 0), (0, 2) and their mean (1, 1).
    # Distances: |w0 - w1| = 2*sqrt(2), |w0 - w2| = |w1 - w2| = sqrt(2), so the sums are
    # 3*sqrt(2), 3*sqrt(2) and 2*sqrt(2): the mean filter sits at the geometric median.
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).view(3, 2, 1, 1))
    model = nn.Sequential(conv)
    group = ChannelGroup(name="0", size=3, producers=("0",), consumers=(), norms=(), observed=(), inner=True)
    scores = create_criterion("fpgm").score(model, [group], ScoringContext())["0"]
    root2 = math.sqrt(2)
    assert torch.allclose(scores, torch.tensor([3 * root2, 3 * root2, 2 * root2]))


def test_taylor_needs_calibration(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    with pytest.raises(InputError, match="calibration"):
        create_criterion("taylor").score(tiny_resnet, space.groups, ScoringContext())


def test_taylor_matches_backward_reference(tiny_resnet, example_input, calibration_batches):
    group = _single_producer_group(PruningSpace.build(tiny_resnet, example_input), "layer1.conv1")
    scores = create_criterion("taylor").score(
        tiny_resnet, [group], ScoringContext(calibration=calibration_batches)
    )[group.name]
    weight = tiny_resnet.layer1.conv1.weight  # no bias: the filter's weights are all of P_i
    expected = torch.zeros(group.size)
    for inputs, targets in calibration_batches:
        loss = nn.functional.cross_entropy(tiny_resnet(inputs), targets)
        (grad,) = torch.autograd.grad(loss, [weight])
        expected += (grad * weight).detach().sum((1, 2, 3)) ** 2
    expected /= len(calibration_batches)
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-12)
