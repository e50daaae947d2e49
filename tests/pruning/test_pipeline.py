"""prune_with_criterion end to end: score, plan, prune; the original is never modified."""
from __future__ import annotations

import copy

import pytest
import torch

from pruning.criteria import Criterion, ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.structure import ModelSpec, PruningError, PruningSpace, save_checkpoint
from pruning.structure import count_macs, count_params
from pruning.models import create_model
from pruning.pipeline import prune_with_criterion, score_channels
from pruning.planning import FLOPS_TOLERANCE, InfeasibleTargetError, PruningConfig
from tiny_models import with_random_bn_stats


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = with_random_bn_stats(create_model("resnet20", in_channels=1), 0)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return model, x


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _masked(model, space, kept):
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for g in space.groups:
            if g.name in kept:
                removed = torch.ones(g.size, dtype=torch.bool)
                removed[kept[g.name]] = False
                for name in (*g.producers, *g.norms):
                    modules[name].weight[removed] = 0
                    if modules[name].bias is not None:
                        modules[name].bias[removed] = 0
    return masked


@pytest.mark.parametrize("strategy", ["full", "inner"])
def test_l1_resnet20_half_the_flops(resnet20, strategy):
    model, x = resnet20
    before = _state(model)
    outcome = prune_with_criterion(
        model, x, create_criterion("l1"), PruningConfig(strategy=strategy, flops_reduction=0.5)
    )
    assert outcome.model is not model
    assert abs(outcome.planned_reduction - 0.5) <= FLOPS_TOLERANCE
    measured = 1 - count_macs(outcome.model, x) / count_macs(model, x)
    assert measured == pytest.approx(outcome.planned_reduction, abs=1e-9)
    assert abs(measured - 0.5) <= FLOPS_TOLERANCE
    assert count_params(outcome.model) < count_params(model)
    # only the strategy's groups are scored and planned
    groups = outcome.space.select(strategy)
    assert set(outcome.scores) == set(outcome.keep) == {g.name for g in groups}
    # l1 scores: the mean over a group's producers of each filter's L1 norm
    modules = dict(model.named_modules())
    for g in groups:
        expected = torch.stack(
            [modules[p].weight.detach().flatten(1).abs().sum(1) for p in g.producers]
        ).mean(0)
        assert torch.allclose(outcome.scores[g.name], expected)
        if g.name in outcome.kept_indices:
            top = torch.topk(outcome.scores[g.name], outcome.keep[g.name]).indices.sort().values
            assert torch.equal(outcome.kept_indices[g.name], top)
        else:
            assert outcome.keep[g.name] == g.size
    # widths as planned, outputs as the masked original, original untouched
    pruned = dict(outcome.model.named_modules())
    for g in groups:
        for p in g.producers:
            assert pruned[p].out_channels == outcome.keep[g.name]
    with torch.no_grad():
        got, expected = outcome.model(x), _masked(model, outcome.space, outcome.kept_indices)(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reuses_a_given_space_and_is_deterministic(resnet20):
    model, x = resnet20
    space = PruningSpace.build(model, x)
    config = PruningConfig(allocation="global", flops_reduction=0.3)
    a = prune_with_criterion(model, x, create_criterion("l1"), config, space=space)
    b = prune_with_criterion(model, x, create_criterion("l1"), config)
    assert a.space is space
    assert a.keep == b.keep
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))


def test_ratio_zero_is_bit_identical_and_untouched(tiny_resnet, example_input):
    model = tiny_resnet.train()  # even in train mode: no BN statistic moves
    before = _state(model)
    outcome = prune_with_criterion(model, example_input, create_criterion("l1"), PruningConfig(ratio=0.0))
    assert outcome.kept_indices == {}
    assert outcome.planned_reduction == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(outcome.model.state_dict()[k], v), k
    model.eval(), outcome.model.eval()
    with torch.no_grad():
        assert torch.equal(outcome.model(example_input), model(example_input))


def test_infeasible_target_raises_before_pruning(resnet20):
    model, x = resnet20
    with pytest.raises(InfeasibleTargetError, match="at most 0.8"):
        prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(strategy="inner", flops_reduction=0.9))


class _BadCriterion(Criterion):
    name = "bad"

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def score(self, model, groups, context):
        out = {g.name: torch.rand(g.size) for g in groups}
        first = groups[0].name
        if self.mode == "missing":
            del out[first]
        elif self.mode == "short":
            out[first] = out[first][:-1]
        else:
            out[first][0] = float("nan")
        return out


@pytest.mark.parametrize("mode", ["missing", "short", "nan"])
def test_invalid_scores_are_rejected(tiny_resnet, example_input, mode):
    model = tiny_resnet
    space = PruningSpace.build(model, example_input)
    said = "non-finite scores \\(NaN or inf\\)" if mode == "nan" else "no valid scores"
    with pytest.raises(PruningError, match=f"criterion 'bad' gave {said} for layer 'conv1'"):
        score_channels(_BadCriterion(mode), model, space, "full", ScoringContext())
    with pytest.raises(PruningError, match=said):
        prune_with_criterion(model, example_input, _BadCriterion(mode), PruningConfig(ratio=0.5))


def test_bad_names_raise_with_the_valid_values():
    with pytest.raises(ValueError, match="unknown criterion 'l3'; valid: .*l1, l2"):
        create_criterion("l3")
    with pytest.raises(PruningError, match="valid: full, inner"):
        PruningConfig(ratio=0.5, strategy="everything")


@pytest.mark.parametrize("criterion", ["l1", "bn-scale", "random", "taylor"])
def test_a_model_with_nan_weights_is_refused_before_scoring(criterion, tiny_resnet, example_input):
    model = copy.deepcopy(tiny_resnet)
    name, weight = next((n, p) for n, p in model.named_parameters() if p.dim() == 4)
    with torch.no_grad():
        weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=f"non-finite.*'{name}'"):
        prune_with_criterion(model, example_input, create_criterion(criterion), PruningConfig(ratio=0.3))


def test_a_model_with_nan_weights_is_not_saved(tiny_resnet, tmp_path):
    model = copy.deepcopy(tiny_resnet)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "nan.pt"
    with pytest.raises(InputError, match="non-finite"):
        save_checkpoint(path, model, ModelSpec("tiny", 10, 1, (1, 28, 28)))
    assert not path.exists()
