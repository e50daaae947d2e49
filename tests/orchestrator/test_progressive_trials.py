"""Progressive recipes in sweep trials and study cells, without Ray: the per-step metrics reach
MLflow through a name pattern, and a refinement that lists step counts runs each candidate once
per count, named for it. Milliseconds."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from orchestrator.experiment import Tracker
from orchestrator.experiment.callback import MlflowTrialLogger
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta, plain_config, typed_config
from orchestrator.studies.trial import CELL_METRIC_PATTERNS, CELL_METRICS
from orchestrator.sweeps.refine import RefineSettings, refine_variants
from orchestrator.sweeps.sweep import per_variant
from orchestrator.sweeps.trials import TRIAL_METRIC_PATTERNS, TRIAL_METRICS
from pruning.recovery import RecoveryResult, StepResult


def stepped_result(steps: int) -> RecoveryResult:
    """A recovery of ``steps`` steps (the last unscored), as ``recover`` returns it."""
    return RecoveryResult({"bn_recalibrated": 0.8}, {"pruned": 0.0, "bn_recalibrated": 0.5}, {}, outcome=None, steps=tuple(
        StepResult(n, n / 10, {"scored": 0.1, "pruned": 0.2, **({"reconstructed": 0.3} if n < steps else {})},
                   0.7 if n < steps else None)
        for n in range(1, steps + 1)))


def fake_trial(result: dict):
    return SimpleNamespace(trial_id="t1", config={META_KEY: TrialMeta(number=1), "criterion": "l1"},
                           last_result=result, status="TERMINATED", checkpoint=None, experiment_tag="1")


@pytest.mark.parametrize(("names", "patterns"), [(TRIAL_METRICS, TRIAL_METRIC_PATTERNS),
                                                 (CELL_METRICS, CELL_METRIC_PATTERNS)])
def test_every_step_metric_is_logged_however_many_steps(names, patterns, tmp_path):
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
    assert restored.record(fake_trial({"accuracy": 0.5, "step1_pruned_seconds": 1.0}), "FINISHED").metrics == {"accuracy": 0.5}


def test_listed_steps_refine_each_candidate_once_per_count_and_survive_the_candidates_file():
    candidates = [{"criterion": "l1", META_KEY: TrialMeta(name=f"refine-{n:03d}", stage="refine", refines=f"trial-{n:03d}")}
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
