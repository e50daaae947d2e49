"""The search-space contract, checked for every registered space with a real Optuna study."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search_spaces import (
    SpaceContext,
    TrialPlan,
    create_search_space,
    list_search_spaces,
    search_space_class,
)
from search_spaces.per_layer import PerLayerSpace
from space_helpers import VARIANT_IDS, VARIANTS, new_study, random_scores, sample_plan

N_TRIALS = 20
EXAMPLES = Path(__file__).resolve().parents[2] / "search_spaces" / "examples"


def test_all_spaces_registered():
    assert set(list_search_spaces()) >= {"uniform", "per_layer", "concentration", "snpfi", "stages"}
    for name in list_search_spaces():
        assert search_space_class(name).name == name


def test_spaces_declare_what_context_they_read():
    needs = {name: (create_search_space(name).needs_stats, create_search_space(name).needs_utilization)
             for name in list_search_spaces()}
    assert needs["concentration"] == (True, False) and needs["snpfi"] == (False, True)
    assert needs["uniform"] == needs["stages"] == needs["per_layer"] == (False, False)
    assert create_search_space("per_layer", prior="concentration").needs_stats


@pytest.mark.parametrize("strategy", ["full", "inner"])
@pytest.mark.parametrize("name, options", VARIANTS, ids=VARIANT_IDS)
def test_space_samples_valid_plans(name, options, strategy, contexts):
    context = contexts[strategy]
    space = create_search_space(name, **options)
    study = new_study()
    feasible = 0
    names = None
    for _ in range(N_TRIALS):
        trial = study.ask()
        plan = sample_plan(space, trial, context)
        assert isinstance(plan, TrialPlan)
        # parameter names are stable across trials
        names = names or set(trial.params)
        assert set(trial.params) == names
        assert plan.params == trial.params
        # shared parameters within their ranges
        assert plan.criterion in space.criteria
        assert space.finetune_lr[0] <= plan.finetune_lr <= space.finetune_lr[1]
        assert space.finetune_epochs[0] <= plan.finetune_epochs <= space.finetune_epochs[1]
        assert space.weight_decay[0] <= plan.weight_decay <= space.weight_decay[1]
        assert plan.config.strategy == strategy
        # pure: the same params give the same plan
        assert space.to_plan(dict(trial.params), context) == plan
        reason = space.check_feasible(plan, context)
        if reason is None:
            feasible += 1
            scores = random_scores(context) if plan.needs_scores else None
            keep = plan.keep(context, scores)
            groups = {g.name: g for g in context.space.select(strategy)}
            assert set(keep) == set(groups)
            assert all(1 <= keep[n] <= groups[n].size for n in keep)
            low, high = space.flops_bounds
            assert low <= plan.planned_reduction(context, scores) <= high
        else:
            assert isinstance(reason, str) and reason and "\n" not in reason
        study.tell(trial, 0.0)
    assert feasible > 0, f"space {name!r} produced no feasible plan in {N_TRIALS} trials"


def test_check_feasible_reports_flops_outside_bounds(contexts):
    context = contexts["full"]
    space = create_search_space("uniform", flops_reduction=(0.5, 0.5), flops_bounds=(0.1, 0.3))
    plan = sample_plan(space, new_study().ask(), context)
    reason = space.check_feasible(plan, context)
    assert reason is not None and "flops_bounds" in reason


def test_check_feasible_reports_unreachable_target(contexts):
    # two inner groups capped at 90 % cannot remove 99 % of the MACs
    context = contexts["inner"]
    space = create_search_space("uniform", flops_reduction=(0.99, 0.99), flops_bounds=(0.0, 1.0))
    plan = sample_plan(space, new_study().ask(), context)
    reason = space.check_feasible(plan, context)
    assert reason is not None and "cannot be met" in reason


def test_per_layer_one_parameter_per_group(contexts):
    for strategy, context in contexts.items():
        trial = new_study().ask()
        plan = sample_plan(create_search_space("per_layer"), trial, context)
        groups = context.space.select(strategy)
        ratio_params = [p for p in trial.params if p.startswith("ratio.")]
        assert len(ratio_params) == len(groups)
        assert sorted(ratio_params) == sorted(f"ratio.{g.name}" for g in groups)
        assert PerLayerSpace.parameter_names(context) == [f"ratio.{g.name}" for g in groups]
        assert dict(plan.config.schedule) == {g.name: trial.params[f"ratio.{g.name}"] for g in groups}


def test_concentration_weights_and_missing_stats(contexts):
    context = contexts["full"]
    space = create_search_space("concentration", global_ranking=False)
    plan = sample_plan(space, new_study().ask(), context)
    assert set(plan.ratio_weights) == {g.name for g in context.space.groups}
    assert all(0.0 <= w <= 1.0 for w in plan.ratio_weights.values())
    # temperature 0: uniform weights, the same plan as the uniform space at the same target
    params = dict(plan.params, temperature=0.0)
    flat = space.to_plan(params, context)
    assert set(flat.ratio_weights.values()) == {1.0}
    uniform = create_search_space("uniform", global_ranking=False).to_plan(params, context)
    assert flat.keep(context) == uniform.keep(context)
    bare = SpaceContext(space=context.space)
    with pytest.raises(ValueError, match="activation statistics"):
        sample_plan(space, new_study().ask(), bare)


def test_snpfi_sparsity_from_curves(contexts):
    context = contexts["full"]
    space = create_search_space("snpfi")
    params = {"tau": 0.9, "criterion": "l1", "finetune_lr": 0.01, "finetune_epochs": 1, "weight_decay": 1e-4}
    plan = space.to_plan(params, context)
    for group in context.space.groups:
        curve = context.utilization[group.name]
        k_star = int((curve >= 0.9).nonzero()[0])
        assert plan.config.schedule[group.name] == pytest.approx(min(0.9, 1 - k_star / group.size))
    # higher retention never prunes more
    looser = space.to_plan(dict(params, tau=0.99), context)
    assert all(looser.config.schedule[n] <= plan.config.schedule[n] for n in plan.config.schedule)
    with pytest.raises(ValueError, match="utilization"):
        sample_plan(space, new_study().ask(), SpaceContext(space=context.space))
    short = {n: c[:-1] for n, c in context.utilization.items()}
    with pytest.raises(ValueError, match="length"):
        space.to_plan(params, SpaceContext(space=context.space, utilization=short))


@pytest.mark.parametrize(
    "name, options, option",
    [
        ("uniform", {"flops_reduction": (0.9, 0.2)}, "flops_reduction"),
        ("uniform", {"flops_reduction": (0.2, 1.0)}, "flops_reduction"),
        ("uniform", {"criteria": ["l1", "no-such-criterion"]}, "criteria"),
        ("uniform", {"criteria": []}, "criteria"),
        ("uniform", {"finetune_lr": (0.0, 0.1)}, "finetune_lr"),
        ("uniform", {"finetune_epochs": (2, 1)}, "finetune_epochs"),
        ("uniform", {"finetune_epochs": (0.5, 1)}, "finetune_epochs"),
        ("uniform", {"weight_decay": "small"}, "weight_decay"),
        ("uniform", {"flops_bounds": (0.1, 1.5)}, "flops_bounds"),
        ("per_layer", {"layer_ratio": (0.0, 0.95)}, "layer_ratio"),
        ("concentration", {"alpha": (-0.1, 0.5)}, "alpha"),
        ("concentration", {"temperature": (2.0, 1.0)}, "temperature"),
        ("snpfi", {"tau": (0.0, 0.9)}, "tau"),
        ("per_layer", {"prior": "bogus"}, "prior"),
        ("per_layer", {"multiplier": (0.0, 1.5)}, "multiplier"),
        ("stages", {"stages": 0}, "stages"),
        ("stages", {"stages": "4"}, "stages"),
        ("stages", {"stage_weight": (0.0, 0.0)}, "stage_weight"),
        ("stages", {"stage_weight": (0.5, 1.5)}, "stage_weight"),
    ],
)
def test_bad_options_name_the_option(name, options, option):
    with pytest.raises(ValueError, match=option) as info:
        create_search_space(name, **options)
    assert "\n" not in str(info.value)


def test_unknown_space_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        create_search_space("no-such-space")
    message = str(info.value)
    assert "no-such-space" in message
    assert all(name in message for name in list_search_spaces())


@pytest.mark.parametrize("name", list_search_spaces())
def test_unknown_option_is_a_type_error(name):
    with pytest.raises(TypeError, match="bogus_option"):
        create_search_space(name, bogus_option=1)


def test_lists_from_yaml_are_accepted():
    space = create_search_space("uniform", flops_reduction=[0.3, 0.6], criteria="l2", finetune_epochs=[1, 2])
    assert space.flops_reduction == (0.3, 0.6)
    assert space.criteria == ("l2",)
    assert space.finetune_epochs == (1, 2)


@pytest.mark.parametrize("name", list_search_spaces())
def test_example_yaml_lists_every_option_with_its_default(name):
    config = yaml.safe_load((EXAMPLES / f"space_{name}.yaml").read_text())["space"]
    assert config["name"] == name
    from_yaml = create_search_space(**config)
    default = create_search_space(name)
    assert from_yaml.options() == default.options()
    assert set(config) - {"name"} == set(default.options())


# --- warm starts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["full", "inner"])
@pytest.mark.parametrize("name, options", VARIANTS, ids=VARIANT_IDS)
def test_warm_starts_are_complete_params_within_bounds(name, options, strategy, contexts):
    context = contexts[strategy]
    space = create_search_space(name, criteria=["l1", "fpgm"], **options)
    starts = space.warm_starts(context)
    assert starts, f"space {name!r} lists no warm start"
    assert starts == create_search_space(name, criteria=["l1", "fpgm"], **options).warm_starts(context)  # deterministic
    assert len({tuple(sorted(s.items())) for s in starts}) == len(starts)  # no repeats
    sampled = new_study().ask()
    space.define(sampled, context)
    distributions = sampled.distributions
    study = new_study()
    for start in starts:
        assert set(start) == set(distributions), "a warm start names exactly the define-by-run parameters"
        for key, value in start.items():
            assert distributions[key]._contains(distributions[key].to_internal_repr(value)), (key, value)
        plan = space.to_plan(start, context)
        assert plan.params == start and plan.finetune_epochs == space.finetune_epochs[0]
        # enqueued, the warm start is exactly what the next trial suggests
        study.enqueue_trial(start)
        trial = study.ask()
        space.define(trial, context)
        assert trial.params == start
        study.tell(trial, 0.0)


def test_warm_starts_are_the_one_shot_schedules(contexts):
    context = contexts["full"]
    uniform = create_search_space("uniform", criteria=["l1", "fpgm"], flops_reduction=(0.2, 0.8),
                                  flops_bounds=(0.4, 0.9))
    starts = uniform.warm_starts(context)
    # every criterion x targets at the quartiles of [0.4, 0.8] (the target range within flops_bounds),
    # uniform ratios, then the same as global rankings
    schedules = [(c, t) for c in ("l1", "fpgm") for t in (0.5, 0.6, 0.7)]
    assert [(s["criterion"], s["flops_reduction"], s["allocation"]) for s in starts] == [
        (c, t, allocation) for allocation in ("layerwise", "global") for c, t in schedules]
    assert all(s["finetune_epochs"] == 0 for s in starts)
    assert [s["flops_reduction"] for s in create_search_space(
        "uniform", criteria=["l1", "fpgm"], flops_reduction=(0.2, 0.8), flops_bounds=(0.4, 0.9),
        global_ranking=False).warm_starts(context)] == [t for _, t in schedules]
    concentration = create_search_space("concentration", criteria=["l1", "fpgm"], alpha=(0.2, 1.0),
                                        temperature=(0.0, 0.5))
    starts = concentration.warm_starts(context)
    uniform_ratios = [s for s in starts if s["temperature"] == 0.0 and s["allocation"] == "layerwise"]
    assert [s["criterion"] for s in uniform_ratios] == ["l1"] * 3 + ["fpgm"] * 3
    assert starts[:6] == uniform_ratios  # the strongest one-shot schedules first, then as global rankings
    assert starts[6:12] == [{**s, "allocation": "global"} for s in uniform_ratios]
    plain = starts[12:]
    assert sorted({s["alpha"] for s in plain}) == [0.2, 0.5, 1.0]  # 0 clipped into the range
    assert {s["temperature"] for s in plain} == {0.5} and {s["criterion"] for s in plain} == {"l1"}
    assert {s["tau"] for s in create_search_space("snpfi").warm_starts(context)} == {0.95}
    per_layer = create_search_space("per_layer").warm_starts(context)
    for start in per_layer:  # one ratio in every layer
        assert len({v for k, v in start.items() if k.startswith("ratio.")}) == 1
    reductions = [create_search_space("per_layer").to_plan(s, context).planned_reduction(context) for s in per_layer]
    assert reductions == sorted(reductions) and len(set(reductions)) == len(reductions)


def test_a_space_without_warm_starts_lists_none(contexts):
    from search_spaces import SearchSpace

    class Bare(SearchSpace):
        def _own_options(self):
            return {}

        def define(self, trial, context):
            self._define_shared(trial)

        def to_plan(self, params, context):
            raise NotImplementedError

    assert Bare().warm_starts(contexts["full"]) == []


# --- global ranking -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("uniform", {}), ("concentration", {}), ("stages", {}),
                                           ("per_layer", {"prior": "uniform"})])
def test_allocation_global_ranks_every_channel_to_the_target(name, options, contexts):
    context = contexts["full"]
    space = create_search_space(name, flops_bounds=(0.2, 0.6), **options)
    start = next(s for s in space.warm_starts(context) if s["allocation"] == "global")
    plan = space.to_plan(start, context)
    assert plan.needs_scores and plan.config.allocation == "global" and plan.ratio_weights is None
    assert plan.config.flops_reduction == start["flops_reduction"]
    with pytest.raises(Exception, match="give scores"):
        plan.keep(context)
    assert space.check_feasible(plan, context) is None
    scores = random_scores(context)
    assert abs(plan.planned_reduction(context, scores) - start["flops_reduction"]) <= 0.01
    # the same target ranked with other scores keeps other channel counts: the scores decide
    flipped = {name: -s for name, s in scores.items()}
    assert plan.keep(context, flipped) != plan.keep(context, scores)
    layerwise = space.to_plan({**start, "allocation": "layerwise"}, context)
    assert not layerwise.needs_scores and layerwise.keep(context) != plan.keep(context, scores)
    outside = space.to_plan({**start, "flops_reduction": 0.7}, context)
    assert "outside flops_bounds" in space.check_feasible(outside, context)


def test_global_ranking_is_off_without_a_flops_target_or_when_asked(contexts):
    context = contexts["full"]
    for space in (create_search_space("snpfi"), create_search_space("per_layer"),
                  create_search_space("uniform", global_ranking=False)):
        trial = new_study().ask()
        space.define(trial, context)
        assert "allocation" not in trial.params
        assert all("allocation" not in s for s in space.warm_starts(context))
    with pytest.raises(ValueError, match="global_ranking must be true or false"):
        create_search_space("uniform", global_ranking="yes")


def test_plan_params_drop_the_layer_parameters_of_a_global_ranking(contexts):
    context = contexts["full"]
    space = create_search_space("concentration")
    start = next(s for s in space.warm_starts(context) if s["allocation"] == "global")
    other = {**start, "alpha": 0.9, "temperature": 2.5}
    assert space.plan_params(other) == space.plan_params(start)
    assert space.to_plan(other, context).config == space.to_plan(start, context).config  # indeed one plan
    assert set(space.plan_params(start)) == {"flops_reduction", "criterion", "finetune_lr", "finetune_epochs",
                                             "weight_decay", "allocation"}
    layerwise = {**start, "allocation": "layerwise"}
    assert space.plan_params(layerwise) == layerwise
    assert space.plan_params({**layerwise, "alpha": 0.9}) != space.plan_params(layerwise)


@pytest.mark.parametrize("name, source, options", [
    ("uniform", "uniform", {}),
    ("concentration", "concentration", {"alpha": "alpha", "temperature": "temperature"}),
    ("snpfi", "snpfi", {"tau": "tau"}),
])
def test_plans_and_warm_starts_are_the_ratio_sources_plans(name, source, options, contexts):
    """Every warm start (the one-shot schedules) plans exactly what the registry's ratio source
    plans with the same values; a global ranking is the ``global`` source's."""
    from pruning.planning import RatioInputs, RatioTarget, create_ratio_source

    context = contexts["full"]
    space = create_search_space(name)
    inputs = RatioInputs(context.space, stats=context.stats, utilization=context.utilization)
    for params in space.warm_starts(context):
        plan = space.to_plan(params, context)
        ranked = params.get("allocation") == "global"
        target = RatioTarget(flops_reduction=params.get("flops_reduction"), strategy=context.strategy)
        expected = create_ratio_source("global" if ranked else source,
                                       **({} if ranked else {o: params[p] for o, p in options.items()}))
        expected = expected.plan(target, inputs)
        assert plan.config == expected.config and plan.ratio_weights == expected.ratio_weights, params
