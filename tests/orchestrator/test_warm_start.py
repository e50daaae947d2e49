"""Warm starts and the choice of refinement candidates, without Ray trials: the screening
searcher hands out the space's one-shot schedules first, then Optuna's samples."""
from __future__ import annotations

import optuna
import pytest

from orchestrator import cli
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta, split_config
from orchestrator.sweeps import SweepConfig, register_context
from orchestrator.sweeps.refine import select_candidates
from orchestrator.sweeps.sweep import screening_search
from pruning.structure import PruningSpace
from search_spaces import SpaceContext

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(tmp_path, **sweep) -> SweepConfig:
    return SweepConfig.from_dict({
        "checkpoint": str(tmp_path / "base.pt"), "run_dir": str(tmp_path / "run"),
        "space": {"name": "uniform", "criteria": ["l1", "fpgm"], "flops_reduction": [0.2, 0.8]},
        "sweep": {"seed": 0, **sweep},
    })


def _suggestions(config, context, count: int) -> list[dict]:
    search = screening_search(config, config.space.create(), context, "warm-key")
    with register_context("warm-key", context):
        return [search.suggest(f"t{i}") for i in range(count)]


@pytest.fixture
def context(tiny_resnet, example_input) -> SpaceContext:
    return SpaceContext(space=PruningSpace.build(tiny_resnet, example_input))


def test_the_first_trials_are_the_warm_starts_then_optuna_samples(tmp_path, context):
    config = _config(tmp_path, trials=14)
    starts = config.space.create().warm_starts(context)
    assert len(starts) == 12  # 2 criteria x 3 targets, uniform ratios then global ranking
    configs = _suggestions(config, context, 14)
    assert [split_config(c)[0] for c in configs[:12]] == starts
    assert [split_config(c)[1].number for c in configs] == list(range(14))
    assert all(split_config(c)[1].stage == "screen" for c in configs)
    sampled = [split_config(c)[0] for c in configs[12:]]
    assert all(s not in starts and set(s) == set(starts[0]) for s in sampled)


def test_warm_starts_count_towards_trials_and_can_be_switched_off(tmp_path, context):
    starts = _config(tmp_path).space.create().warm_starts(context)
    # 4 trials: the first 4 warm starts only
    four = _suggestions(_config(tmp_path, trials=4), context, 4)
    assert [split_config(c)[0] for c in four] == starts[:4]
    off = _suggestions(_config(tmp_path, trials=4, warm_start=False), context, 4)
    assert not any(split_config(c)[0] in starts for c in off)


def test_candidates_spread_over_the_front_then_the_next_layers():
    objectives = {"accuracy": "max", "macs": "min"}
    front = [{"accuracy": 0.5 + 0.05 * i, "macs": 10.0 + i, "params": {"i": i}} for i in range(5)]
    dominated = [{"accuracy": 0.4, "macs": 12.5, "params": {"i": 10}}, {"accuracy": 0.3, "macs": 14.0, "params": {"i": 11}}]
    infeasible = [{"accuracy": 0.99, "macs": 1.0, "feasible": False, "params": {"i": 12}}]
    points = [*dominated, *front, *infeasible]

    def chosen(count, pool=points):
        return [pool[i]["params"]["i"] for i in select_candidates(pool, objectives, count)]

    # evenly spaced MACs quantiles of the front: cheapest, middle, most expensive
    assert chosen(3) == [0, 2, 4]
    assert chosen(2) == [0, 4] and chosen(1) == [2]
    # the front (5) is taken whole, then the next non-dominated layer fills up; infeasible never
    assert chosen(6)[:5] == [0, 1, 2, 3, 4] and chosen(6)[5] in (10, 11)
    assert sorted(chosen(9)) == [0, 1, 2, 3, 4, 10, 11]
    # repeated params are refined once
    assert chosen(2, [front[0], dict(front[0]), front[4]]) == [0, 4]
    assert select_candidates(points, objectives, 0) == []


def test_sweep_accepts_verbose():
    args = cli.build_parser().parse_args(["sweep", "--config", "x.yaml", "--verbose"])
    assert args.verbose is True
    assert cli.build_parser().parse_args(["sweep", "--config", "x.yaml"]).verbose is False


def test_targets_refine_the_most_accurate_trial_reaching_each_first():
    objectives = {"accuracy": "max", "macs": "min"}
    # macs_reduction 0.1 .. 0.8; accuracy falls with it, but trial 5 (0.52) beats trial 4 (0.5)
    reductions = [0.1, 0.2, 0.3, 0.4, 0.5, 0.52, 0.6, 0.7, 0.8]
    accuracies = [0.95, 0.94, 0.93, 0.92, 0.85, 0.90, 0.88, 0.86, 0.80]
    points = [{"accuracy": a, "macs": 1 - r, "macs_reduction": r, "params": {"i": i}}
              for i, (r, a) in enumerate(zip(reductions, accuracies))]
    pick = select_candidates(points, objectives, 4, targets=[0.5, 0.7, 0.97])
    # 0.5 -> trial 5 (most accurate at >= 0.5), 0.7 -> trial 7, 0.97 reached by none: skipped;
    # the fourth candidate comes from the spread over the remaining front
    assert pick[:2] == [5, 7] and len(pick) == 4 and len(set(pick)) == 4
    # two per target: the two most accurate reaching each, then the spread
    two = select_candidates(points, objectives, 5, targets=[0.5, 0.7], per_target=2)
    assert two[:4] == [5, 6, 7, 8] and len(set(two)) == 5
    # a trial 0.3 points short of a target (within the margin) still reaches it
    short = [dict(points[4], macs_reduction=0.4970)]
    assert select_candidates(short, objectives, 1, targets=[0.5]) == [0]


def test_refine_targets_are_validated():
    from orchestrator.experiment.checks import ConfigError
    from orchestrator.sweeps.refine import RefineSettings

    assert RefineSettings(candidates=3, targets=[0.3, 0.5]).targets == (0.3, 0.5)
    with pytest.raises(ConfigError, match="sweep.refine.targets.*in \\(0, 1\\)"):
        RefineSettings(candidates=3, targets=[1.5])
    with pytest.raises(ConfigError, match="2 targets x 1 per target need at least as many candidates, got 1"):
        RefineSettings(candidates=1, targets=[0.3, 0.5])
    with pytest.raises(ConfigError, match="2 targets x 2 per target need at least as many candidates, got 3"):
        RefineSettings(candidates=3, targets=[0.3, 0.5], per_target=2)
    with pytest.raises(ConfigError, match="sweep.refine.per_target: must be >= 1"):
        RefineSettings(candidates=3, per_target=0)
    with pytest.raises(ConfigError, match="must be a list"):
        RefineSettings(candidates=1, targets="0.5")
    assert RefineSettings(candidates=3, concurrency=3).to_dict()["concurrency"] == 3
    assert RefineSettings.from_dict({"candidates": 3}).concurrency is None
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match=f"sweep.refine.concurrency: must be .*got {bad!r}"):
            RefineSettings(candidates=3, concurrency=bad)


def test_two_screened_global_rankings_that_differ_only_in_unused_params_are_refined_once():
    from types import SimpleNamespace

    from orchestrator.sweeps.sweep import refine_configs
    from search_spaces import create_search_space

    space = create_search_space("concentration", criteria=["l1"])
    shared = {"criterion": "l1", "finetune_lr": 0.01, "finetune_epochs": 0, "weight_decay": 5e-4}

    def result(number, accuracy, macs, **params):
        return SimpleNamespace(error=None, config={**shared, **params, META_KEY: TrialMeta(number=number)},
                               metrics={"accuracy": accuracy, "macs": macs, "macs_reduction": 1 - macs / 10,
                                        "feasible": 1})

    screened = [
        result(0, 0.90, 5.0, flops_reduction=0.5, alpha=0.1, temperature=0.5, allocation="global"),
        result(1, 0.90, 5.0, flops_reduction=0.5, alpha=0.9, temperature=2.0, allocation="global"),  # the same plan
        result(2, 0.80, 3.0, flops_reduction=0.7, alpha=0.1, temperature=0.5, allocation="layerwise"),
    ]
    objectives = {"accuracy": "max", "macs": "min"}
    chosen = [c[META_KEY].refines for c in refine_configs(screened, objectives, 3, plan_params=space.plan_params)]
    assert sorted(chosen) == ["trial-000", "trial-002"]
    assert len(refine_configs(screened, objectives, 3)) == 3  # by the sampled params they differ
