"""Search spaces that scale to deep nets: ``stages`` and ``per_layer``'s priors on ResNet-20/56/110."""
from __future__ import annotations

import optuna
import pytest
import torch

from pruning.models import create_model
from pruning.planning import FLOPS_TOLERANCE
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace
from search_spaces import SpaceContext, create_search_space
from search_spaces.stages import stage_assignment, stage_of
from space_helpers import new_study, random_scores, sample_plan

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEPTHS = ("resnet20", "resnet56", "resnet110")
N_TRIALS = 6
EXAMPLE = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _build(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    return model, PruningSpace.build(model, EXAMPLE)


@pytest.fixture(scope="module")
def resnets() -> dict[str, PruningSpace]:
    return {name: _build(name)[1] for name in DEPTHS}


@pytest.fixture(scope="module")
def resnet56_stats():
    model, space = _build("resnet56")
    batches = [(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.zeros(8, dtype=torch.long))]
    return space, collect_activation_stats(model, space.groups, batches, StatsOptions(bins=8))


def _assert_meets_target(space, plan, context) -> None:
    assert space.check_feasible(plan, context) is None
    keep = plan.keep(context, random_scores(context) if plan.needs_scores else None)
    groups = {g.name: g for g in context.space.select(context.strategy)}
    assert set(keep) == set(groups)
    assert all(1 <= keep[n] <= groups[n].size for n in keep)
    target = plan.config.flops_reduction
    assert target is not None
    assert abs(context.space.reduction(keep) - target) <= FLOPS_TOLERANCE


# --- stage derivation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, stage", [
    ("layer2.3.conv1", "layer2"), ("layer1.0.conv2", "layer1"), ("backbone.layer3.10.conv1", "backbone.layer3"),
    ("conv1", None), ("features.7", None), ("0.conv", None), ("stem.0", None),
])
def test_stage_of_a_layer_name(name, stage):
    assert stage_of(name) == stage


@pytest.mark.parametrize("strategy, expected", [
    ("full", ["layer1", "layer2", "layer3", "other"]), ("inner", ["layer1", "layer2", "layer3"]),
])
def test_stages_have_the_same_parameters_at_every_depth(resnets, strategy, expected):
    space = create_search_space("stages")
    counts = set()
    for depth, pspace in resnets.items():
        context = SpaceContext(space=pspace, strategy=strategy)
        assert space.stage_names(context) == expected
        trial = new_study().ask()
        space.define(trial, context)
        counts.add(len(trial.params))
        assert sorted(p for p in trial.params if p.startswith("weight.")) == sorted(f"weight.{s}" for s in expected)
        assignment = stage_assignment(context, space.stages)
        for group in pspace.select(strategy):
            want = group.name.split(".")[0] if "." in group.name else "other"
            assert assignment[group.name] == want
    assert counts == {len(expected) + 6}  # the weights, flops_reduction, the four shared parameters, allocation


def test_stages_fall_back_to_call_order_buckets_on_vgg():
    _, pspace = _build("vgg16")
    context = SpaceContext(space=pspace)
    groups = [g.name for g in pspace.groups]  # features.0 ... features.40, in call order
    assignment = stage_assignment(context, 4)
    assert [assignment[g] for g in groups] == ["stage1"] * 4 + ["stage2"] * 3 + ["stage3"] * 3 + ["stage4"] * 3
    assert create_search_space("stages", stages=2).stage_names(context) == ["stage1", "stage2"]
    # more buckets than groups: one group per stage
    many = create_search_space("stages", stages=50).stage_names(context)
    assert many == [f"stage{i}" for i in range(1, len(groups) + 1)]


def test_a_single_named_stage_falls_back_to_call_order():
    # MobileNet's names give one stage (`blocks`) and the stem: too few, so buckets by call order
    _, pspace = _build("mobilenet_v1")
    context = SpaceContext(space=pspace)
    assert {stage_of(g.name) for g in pspace.groups} == {"blocks", None}
    assignment = stage_assignment(context, 3)
    assert list(dict.fromkeys(assignment.values())) == ["stage1", "stage2", "stage3"]
    assert assignment["stem.0"] == "stage1" and assignment["blocks.12.pointwise"] == "stage3"


# --- sampled plans meet their FLOPs target on deep nets ---------------------------------------------


@pytest.mark.parametrize("depth", ["resnet56", "resnet110"])
@pytest.mark.parametrize("strategy", ["full", "inner"])
@pytest.mark.parametrize("name, options", [("stages", {}), ("per_layer", {"prior": "uniform"})])
def test_deep_spaces_sample_plans_that_meet_their_target(resnets, depth, strategy, name, options):
    context = SpaceContext(space=resnets[depth], strategy=strategy)
    space = create_search_space(name, **options)
    study = new_study()
    for _ in range(N_TRIALS):
        trial = study.ask()
        plan = sample_plan(space, trial, context)
        _assert_meets_target(space, plan, context)
        study.tell(trial, 0.0)
    for start in space.warm_starts(context):
        _assert_meets_target(space, space.to_plan(start, context), context)


def test_per_layer_concentration_prior_on_resnet56(resnet56_stats):
    pspace, stats = resnet56_stats
    context = SpaceContext(space=pspace, stats=stats)
    space = create_search_space("per_layer", prior="concentration", multiplier=(0.8, 1.25))
    assert space.needs_stats and not create_search_space("per_layer").needs_stats
    study = new_study()
    for _ in range(N_TRIALS):
        trial = study.ask()
        plan = sample_plan(space, trial, context)
        _assert_meets_target(space, plan, context)
        assert plan.needs_scores or set(plan.ratio_weights) == {g.name for g in pspace.groups}
        study.tell(trial, 0.0)
    # multipliers 1: the plain information-concentration plan of the concentration space
    start = space.warm_starts(context)[0]
    plain = create_search_space("concentration").to_plan(
        {**{k: v for k, v in start.items() if not k.startswith("mult.")}, "alpha": 0.5, "temperature": 1.0}, context)
    assert space.to_plan(start, context).keep(context) == plain.keep(context)
    with pytest.raises(ValueError, match="activation statistics"):
        sample_plan(space, new_study().ask(), SpaceContext(space=pspace))


def test_stage_weights_shape_the_plan(resnets):
    context = SpaceContext(space=resnets["resnet56"], strategy="inner")
    space = create_search_space("stages")
    base = {"flops_reduction": 0.4, "criterion": "l1", "finetune_lr": 0.01, "finetune_epochs": 0, "weight_decay": 1e-4,
            "allocation": "layerwise"}
    flat = space.to_plan({**base, "weight.layer1": 0.7, "weight.layer2": 0.7, "weight.layer3": 0.7}, context)
    uniform = create_search_space("uniform").to_plan(base, context)
    assert flat.keep(context) == uniform.keep(context)  # equal weights: the uniform allocation
    skewed = space.to_plan({**base, "weight.layer1": 0.0, "weight.layer2": 0.2, "weight.layer3": 1.0}, context)
    _assert_meets_target(space, skewed, context)
    keep = skewed.keep(context)
    ratio = {stage: [1 - keep[g.name] / g.size for g in context.space.select("inner") if g.name.startswith(stage)]
             for stage in ("layer1", "layer2", "layer3")}
    assert max(ratio["layer1"]) < min(ratio["layer2"]) and max(ratio["layer2"]) < min(ratio["layer3"])


def test_per_layer_prior_parameters_and_uniform_multipliers(resnets):
    context = SpaceContext(space=resnets["resnet110"])
    space = create_search_space("per_layer", prior="uniform", global_ranking=False)
    trial = new_study().ask()
    plan = sample_plan(space, trial, context)
    groups = [g.name for g in context.space.groups]
    assert sorted(p for p in trial.params if p.startswith("mult.")) == sorted(f"mult.{g}" for g in groups)
    assert not any(p.startswith("ratio.") for p in trial.params) and "flops_reduction" in trial.params
    assert all(0.5 <= plan.ratio_weights[g] <= 1.5 for g in groups)
    start = space.warm_starts(context)[1]
    assert {v for k, v in start.items() if k.startswith("mult.")} == {1.0}
    uniform = create_search_space("uniform", global_ranking=False).to_plan(start, context)
    assert space.to_plan(start, context).keep(context) == uniform.keep(context)


@pytest.mark.parametrize("name", ["uniform", "stages"])
def test_round_to_plans_keep_multiples_and_meet_their_target(resnets, name):
    context = SpaceContext(space=resnets["resnet56"])
    space = create_search_space(name, round_to=8)
    study = new_study()
    for _ in range(5):
        trial = study.ask()
        plan = sample_plan(space, trial, context)
        assert plan.config.round_to == 8
        _assert_meets_target(space, plan, context)
        keep = plan.keep(context, random_scores(context) if plan.needs_scores else None)
        assert all(keep[g.name] % 8 == 0 or keep[g.name] == g.size for g in context.space.groups)
        study.tell(trial, 0.0)
    with pytest.raises(ValueError, match="round_to must be an integer >= 1 or a list of integers >= 1, got 0"):
        create_search_space(name, round_to=0)
