"""A baseline on a task of one's own (``user_tasks:bands``): the checkpoint's recorded task or a
``model:`` baseline's configured one, its metrics named by the task, a contradicting configured
task refused; and a trial's prune -> recover -> score path logging the task's metric names."""
from __future__ import annotations

import contextlib
import io
import re

import pytest

from orchestrator import cli
from orchestrator.experiment import ConfigError, DataSettings, ModelSettings, prepare_baseline
from orchestrator.experiment import worker
from pruning.recovery import RecoveryRecipe
from pruning.planning import PruningConfig
from pruning.tasks import TaskSpec

BANDS = TaskSpec("user_tasks:bands", {"bands": 4})
DATA = DataSettings(calibration_images=32, batch_size=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("bands") / "base.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 4}', "--task",
                         BANDS.name, "--task-kwargs", '{"bands": 4}', "--epochs", "1", "--calibration-size", "32",
                         "--batch-size", "32", "--out", str(out), "--quiet"])
    assert code == 0
    return str(out)


def test_a_checkpoint_baseline_runs_on_its_recorded_task(checkpoint):
    setup = prepare_baseline(checkpoint, DATA)
    assert setup.task_spec == BANDS and setup.task.primary == "mse"
    assert set(setup.metrics) == {"mse", "mae", "test_mse", "macs", "params"}
    assert setup.spec.meta["task"] == BANDS.to_dict()
    assert prepare_baseline(checkpoint, DATA, task=BANDS).metrics == setup.metrics  # the same task: no conflict


def test_a_configured_task_the_checkpoint_contradicts_is_refused(checkpoint):
    with pytest.raises(ConfigError, match=r"^task: 'classification' differs from the task 'user_tasks:bands'"):
        prepare_baseline(checkpoint, DATA, task=TaskSpec())


def test_a_model_baseline_takes_the_configured_task():
    task = TaskSpec("user_tasks:bands", {"bands": 2, "images": 2100})  # the default calibration split fits
    setup = prepare_baseline(ModelSettings("user_models:tiny_cnn", kwargs={"width": 4}), DATA, task=task)
    assert setup.task_spec == task and setup.spec.num_classes == 2
    assert setup.spec.meta["task"] == task.to_dict()
    assert set(setup.metrics) == {"mse", "mae", "test_mse", "macs", "params"}


def test_a_trial_logs_the_task_metric_names(checkpoint):
    setup = prepare_baseline(checkpoint, DATA)
    settings = worker.WorkerSettings.of(setup, threads=1)
    assert settings.task == BANDS and settings.import_paths  # tests/, where workers find user_tasks
    state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
    baseline = worker.WorkerBaseline(setup.spec.to_json(), state, setup.space, setup.batches, None, None, settings)
    recipe = RecoveryRecipe(bn_batches=1, bn_data="calibration", batch_size=16, steps=2)
    plan = worker.CriterionPlan("l1", PruningConfig(flops_reduction=0.5))
    _, _, metrics = worker.prune_and_recover(worker.rebuild_model(baseline.spec_json, state), baseline, plan, recipe)
    steps = {k for k in metrics if re.fullmatch(worker.step_metric_pattern("mse"), k)}
    assert {"step1_mse", "step1_macs_reduction"} <= steps
    assert set(metrics) - steps <= set(worker.trial_metric_names(setup.task))
    assert {"mse", "mae", "bn_mse", "pruned_mse", "bn_recalibrated_mse"} <= set(metrics)
    assert not any("accuracy" in name for name in metrics)
