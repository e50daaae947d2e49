"""Progressive recipes in sweep trials and study cells, without Ray: the per-step metrics reach
MLflow through a name pattern, and a refinement that lists step counts runs each candidate once
per count, named for it. Milliseconds."""
from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from orchestrator.experiment import Tracker
from orchestrator.experiment import worker
from orchestrator.experiment.callback import MlflowTrialLogger
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta, plain_config, typed_config
from orchestrator.experiment.worker import step_metric_pattern
from orchestrator.studies.trial import cell_metrics
from orchestrator.sweeps.refine import RefineSettings, refine_variants
from orchestrator.sweeps.sweep import per_variant
from orchestrator.sweeps.trials import trial_metrics
from pruning.tasks import Classification
from pruning.criteria import create_criterion, statistics_options
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryRecipe, RecoveryResult, StepResult
from pruning.statistics import collect_activation_stats
from pruning.structure import ModelSpec, PruningSpace, measure_cost


def stepped_result(steps: int) -> RecoveryResult:
    """A recovery of ``steps`` steps (the last unscored), as ``recover`` returns it."""
    results = tuple(StepResult(n, n / 10, {"scored": 0.1, "pruned": 0.2, **({"reconstructed": 0.3} if n < steps else {})},
                               0.7 if n < steps else None) for n in range(1, steps + 1))
    return RecoveryResult({"bn_recalibrated": 0.8}, {"pruned": 0.0, "bn_recalibrated": 0.5}, {}, outcome=None,
                          steps=results)


def fake_trial(result: dict):
    return SimpleNamespace(trial_id="t1", config={META_KEY: TrialMeta(number=1), "criterion": "l1"},
                           last_result=result, status="TERMINATED", checkpoint=None, experiment_tag="1")


@pytest.mark.parametrize("metrics_of", [trial_metrics, cell_metrics])
def test_every_step_metric_is_logged_however_many_steps(metrics_of, tmp_path):
    names, patterns = metrics_of(Classification()), (step_metric_pattern("accuracy"),)
    steps = stepped_result(12).step_metrics()
    assert {"step1_macs_reduction", "step1_pruned_seconds", "step1_reconstructed_seconds", "step1_accuracy",
            "step12_scored_seconds"} <= set(steps)
    logger = MlflowTrialLogger(Tracker("http://x", "prunesweep", tmp_path), names, (), patterns)
    result = {"accuracy": 0.8, **steps, "stepped": 1.0, "step_count": 3.0, "step1_note": "text", "step0_accuracy": 1.0}
    record = logger.record(fake_trial(result), "FINISHED")
    assert record.metrics == {"accuracy": 0.8, **steps}


def test_a_logger_pickled_before_the_patterns_logs_its_names(tmp_path):
    """Tune restores a running experiment's logger from its pickle: one of an older sweep lacks the patterns."""
    logger = MlflowTrialLogger(Tracker("http://x", "prunesweep", tmp_path), ("accuracy",), ())
    state = logger.__getstate__()
    del state["metric_patterns"]
    restored = MlflowTrialLogger.__new__(MlflowTrialLogger)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    record = restored.record(fake_trial({"accuracy": 0.5, "step1_pruned_seconds": 1.0}), "FINISHED")
    assert record.metrics == {"accuracy": 0.5}


def test_listed_steps_refine_each_candidate_once_per_count_and_survive_the_candidates_file():
    candidates = [{"criterion": "l1",
                   META_KEY: TrialMeta(name=f"refine-{n:03d}", stage="refine", refines=f"trial-{n:03d}")}
                  for n in (2, 7)]
    listed = refine_variants(RefineSettings(candidates=2, recipe={"steps": [1, 4]}))
    configs = per_variant(candidates, listed)
    assert [(c[META_KEY].name, c[META_KEY].refines, c[META_KEY].steps) for c in configs] == [
        ("refine-002-s1", "trial-002", 1), ("refine-002-s4", "trial-002", 4),
        ("refine-007-s1", "trial-007", 1), ("refine-007-s4", "trial-007", 4)]
    assert [typed_config(plain_config(c)) for c in configs] == configs  # what a resume reads back
    # a single count (or none): each candidate once, as it was named, running the recipe's steps
    for recipe in ({"steps": 4}, {}):
        once = per_variant(candidates, refine_variants(RefineSettings(candidates=2, recipe=recipe)))
        assert once == candidates and plain_config(once[0])[META_KEY] == {"name": "refine-002", "stage": "refine",
                                                                           "refines": "trial-002"}


@pytest.mark.parametrize("criterion", ["l1", "apoz"])
def test_a_trial_prunes_in_steps_to_the_one_shot_plan_and_reports_every_step(criterion, tiny_resnet, monkeypatch):
    """What a sweep trial or study cell runs: with ``steps: 3`` the model it returns is the last
    step's, at the one-shot plan's widths; its recovery time counts every step (a statistics
    criterion's statistics collected afresh between them)."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    splits = SimpleNamespace(calibration=TensorDataset(images[:32], labels[:32]), train=TensorDataset(images, labels),
                             augment_by_default=False)
    monkeypatch.setattr(worker, "_load_data", lambda config, task: splits)
    batches = [(images[:16], labels[:16]), (images[16:32], labels[16:32])]
    space = PruningSpace.build(tiny_resnet, torch.zeros(1, 1, 28, 28))
    options = statistics_options([create_criterion(criterion)])
    stats = collect_activation_stats(tiny_resnet, space.groups, batches, options)
    state = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    baseline = worker.WorkerBaseline(ModelSpec("tiny", 10, 1, (1, 28, 28)).to_json(), state, space, batches, stats,
                                     None, worker.WorkerSettings(None, (1, 28, 28), 1))
    monkeypatch.setattr(worker.WorkerBaseline, "build_model", lambda self: rebuilt(tiny_resnet, state))
    plan = worker.CriterionPlan(criterion, PruningConfig(flops_reduction=0.5))
    recipe = RecoveryRecipe(bn_batches=1, bn_data="calibration", batch_size=16)
    one_shot, planned, _ = worker.prune_and_recover(baseline.build_model(), baseline, plan, recipe)
    stepped, outcome, metrics = worker.prune_and_recover(baseline.build_model(), baseline, plan,
                                                         RecoveryRecipe(bn_batches=1, bn_data="calibration",
                                                                        batch_size=16, steps=3))
    assert outcome.keep == planned.keep and outcome.model is stepped
    assert measure_cost(stepped, (1, 28, 28)).macs == measure_cost(one_shot, (1, 28, 28)).macs
    steps = {k: v for k, v in metrics.items() if k.startswith("step")}
    assert {"step1_scored_seconds", "step1_pruned_seconds", "step1_reconstructed_seconds", "step1_accuracy",
            "step3_pruned_seconds", "step1_macs_reduction"} <= set(steps)
    assert metrics["recover_seconds"] >= sum(v for k, v in steps.items() if k.endswith("_seconds"))
    assert metrics["recover_seconds"] > metrics["reconstructed_seconds"] + metrics["bn_recalibrated_seconds"]



def rebuilt(model, state):
    """A fresh copy of ``model`` with ``state`` (what ``WorkerBaseline.build_model`` returns)."""
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(state)
    return fresh
