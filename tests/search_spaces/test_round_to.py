"""``round_to`` as a searched dimension of every space: sampled, planned, warm-started at every choice."""
from __future__ import annotations

import pytest

from search_spaces import create_search_space
from space_helpers import VARIANT_IDS, VARIANTS, new_study, random_scores, sample_plan

N_TRIALS = 20
#: choices the conftest TinyResNet (8 and 16 channels) can still prune at: 4 leaves half of 8
CHOICES = [1, 4]


def _multiples(keep, context, round_to) -> bool:
    return all(keep[g.name] % round_to == 0 or keep[g.name] == g.size for g in context.space.select(context.strategy))


@pytest.mark.parametrize("strategy", ["full", "inner"])
@pytest.mark.parametrize("name, options", VARIANTS, ids=VARIANT_IDS)
def test_a_searched_round_to_is_sampled_and_every_plan_keeps_its_multiples(name, options, strategy, contexts):
    context = contexts[strategy]
    space = create_search_space(name, round_to=CHOICES, **options)
    assert space.round_to_choices == tuple(CHOICES) and space.options()["round_to"] == tuple(CHOICES)
    study = new_study()
    sampled, rounded = set(), 0
    for _ in range(N_TRIALS):
        trial = study.ask()
        plan = sample_plan(space, trial, context)
        sampled.add(trial.params["round_to"])
        assert plan.config.round_to == trial.params["round_to"]
        assert space.to_plan(dict(trial.params), context) == plan  # pure
        if space.check_feasible(plan, context) is None:
            keep = plan.keep(context, random_scores(context) if plan.needs_scores else None)
            assert _multiples(keep, context, plan.config.round_to), (plan.config.round_to, keep)
            rounded += plan.config.round_to > 1
        study.tell(trial, 0.0)
    assert sampled == set(CHOICES)
    assert rounded > 0, f"space {name!r} produced no feasible rounded plan in {N_TRIALS} trials"


@pytest.mark.parametrize("name, options", VARIANTS, ids=VARIANT_IDS)
def test_warm_starts_run_every_schedule_at_every_choice_interleaved(name, options, contexts):
    context = contexts["full"]
    fixed = create_search_space(name, criteria=["l1", "fpgm"], **options).warm_starts(context)
    assert fixed and all("round_to" not in start for start in fixed)
    space = create_search_space(name, criteria=["l1", "fpgm"], round_to=[1, 8, 16], **options)
    starts = space.warm_starts(context)
    # the first schedule at 1, 8, 16, then the second ...: any prefix of three holds every choice
    assert starts == [{**start, "round_to": choice} for start in fixed for choice in (1, 8, 16)]
    study = new_study()
    for start in starts[:6]:
        assert space.to_plan(start, context).config.round_to == start["round_to"]
        study.enqueue_trial(start)
        trial = study.ask()
        space.define(trial, context)
        assert trial.params == start  # complete: exactly the define-by-run parameters
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", ["uniform", "snpfi"])
def test_a_fixed_round_to_samples_nothing_and_plans_with_it(name, contexts):
    context = contexts["full"]
    space = create_search_space(name, round_to=2)
    trial = new_study().ask()
    plan = sample_plan(space, trial, context)
    assert "round_to" not in trial.params and plan.config.round_to == 2
    assert space.round_to_choices == (2,) and space.options()["round_to"] == 2


def test_the_global_ranking_keeps_round_to_in_its_plan_params(contexts):
    context = contexts["full"]
    space = create_search_space("concentration", round_to=[1, 8])
    start = next(s for s in space.warm_starts(context) if s["allocation"] == "global")
    assert space.plan_params(start)["round_to"] == start["round_to"]
    other = {**start, "round_to": 9 - start["round_to"]}  # the other choice
    assert space.plan_params(other) != space.plan_params(start)
    assert space.to_plan(other, context).config != space.to_plan(start, context).config


def test_a_global_ranking_is_infeasible_where_its_widths_cannot_reach_the_target(contexts):
    # TinyResNet keeps all of its 8-channel layers at multiples of 8: at most 28 % of the MACs go
    context = contexts["full"]
    space = create_search_space("uniform", round_to=[1, 8])
    params = {"flops_reduction": 0.5, "criterion": "l1", "finetune_lr": 0.01, "finetune_epochs": 0,
              "weight_decay": 1e-4, "allocation": "global"}
    assert space.check_feasible(space.to_plan({**params, "round_to": 1}, context), context) is None
    reason = space.check_feasible(space.to_plan({**params, "round_to": 8}, context), context)
    assert "cannot be met" in reason and "multiples of 8" in reason


def test_to_plan_reads_a_logged_round_to_and_refuses_one_outside_the_choices(contexts):
    context = contexts["full"]
    space = create_search_space("uniform", round_to=[1, 4])
    start = space.warm_starts(context)[1]
    assert space.to_plan({**start, "round_to": "4"}, context).config.round_to == 4  # as MLflow logs it
    with pytest.raises(ValueError, match="round_to 8 is not one of the space's choices 1, 4"):
        space.to_plan({**start, "round_to": 8}, context)


@pytest.mark.parametrize("value, message", [
    (0, "round_to must be an integer >= 1 or a list of integers >= 1, got 0"),
    (True, "got True"),
    (8.0, "got 8.0"),
    ("8", "got '8'"),
    ([1, 0], r"got \[1, 0\]"),
    ([1, 8.0], r"got \[1, 8.0\]"),
    ([], r"round_to must list at least two values to search \(or be one integer\), got \[\]"),
    ([8], r"at least two values .*, got \[8\]"),
    ([1, 8, 1], r"round_to must not repeat a value, got \[1, 8, 1\]"),
])
def test_bad_round_to_names_the_option_and_the_value(value, message):
    with pytest.raises(ValueError, match=message) as info:
        create_search_space("uniform", round_to=value)
    assert str(info.value).startswith("round_to ") and "\n" not in str(info.value)
