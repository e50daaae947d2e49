"""A sweep on a task of one's own (``user_tasks:bands``: regression, ``mse`` primary, both metrics
lower-is-better): objectives, trial metrics, front columns and the resolved config carry the
task's names; objectives naming a metric the task lacks are refused in one line."""
from __future__ import annotations

import re

import pytest
import yaml

from orchestrator.experiment import ConfigError
from orchestrator.sweeps import SweepConfig, run_sweep
from orchestrator.sweeps.refine import STAGE_REFINE
from orchestrator.experiment.tracking import TAG_STAGE

TASK = {"task": "user_tasks:bands", "task_kwargs": {"bands": 2, "images": 2100}}
MODEL = {"model": "user_models:tiny_cnn", "model_kwargs": {"width": 4}}


def bands_config(run_dir, **sweep) -> dict:
    return {"name": "bands", **MODEL, **TASK, "data": {"calibration_images": 32, "batch_size": 32},
            "recipe": {"bn_batches": 1, "batch_size": 32, "finetune_subset": 32},
            "space": {"name": "uniform", "criteria": ["l1"], "finetune_epochs": [0, 0], "flops_bounds": [0.0, 0.95]},
            "sweep": {"concurrency": 2, "seed": 0, **sweep}, "run_dir": str(run_dir)}


def test_objectives_default_to_the_tasks_primary_metric_and_are_checked_against_it(tmp_path):
    config = SweepConfig.from_dict(bands_config(tmp_path / "run"))
    assert config.objectives == {"mse": "min", "macs": "min"}
    resolved = config.to_dict()
    assert resolved["task"] == "user_tasks:bands" and resolved["task_kwargs"] == {"bands": 2, "images": 2100}
    assert SweepConfig.from_dict(yaml.safe_load(yaml.safe_dump(resolved))) == config
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_dict(bands_config(tmp_path / "run", objectives={"accuracy": "max", "macs": "min"}))
    assert str(info.value) == "sweep.objectives.accuracy: unknown key; valid: mse, mae, macs, params, latency_ms"
    with pytest.raises(ConfigError, match=r"^sweep.objectives.mae: must be 'min' \(lower is better\)"):
        SweepConfig.from_dict(bands_config(tmp_path / "run", objectives={"mae": "max"}))


def test_a_classification_config_records_no_task(tmp_path):
    config = SweepConfig.from_dict({"checkpoint": "base.pt", "space": {"name": "uniform"}, "run_dir": str(tmp_path)})
    assert config.task is None and "task" not in config.to_dict() and "task_kwargs" not in config.to_dict()
    assert config.objectives == {"accuracy": "max", "macs": "min"}


def test_a_two_stage_sweep_names_the_tasks_metrics(ray_session, tmp_path, capfd):
    config = SweepConfig.from_dict(bands_config(tmp_path / "run", trials=2, refine={"candidates": 1}))
    result = run_sweep(config, progress=True)
    assert re.search(r"\[screen\] trial-\d+ finished: mse [0-9.]+, macs", capfd.readouterr().err)
    assert result.complete and result.objectives == {"mse": "min", "macs": "min"}
    assert result.counts()["trials"] == 3 and result.counts()["refined"] == 1
    assert result.baseline.keys() >= {"mse", "mae", "test_mse", "macs", "params"}
    for trial in result.trials:
        assert trial.status == "FINISHED"
        if trial.metrics.get("feasible", 0) >= 0.5:
            assert {"mse", "mae", "bn_mse"} <= trial.metrics.keys()
            assert not any("accuracy" in name for name in trial.metrics)
    refined = [t for t in result.trials if t.tags.get(TAG_STAGE) == STAGE_REFINE]
    assert {"finetuned_mse"} <= refined[0].metrics.keys()
    assert result.front and all(row["test_mse"] >= 0.0 for row in result.front)
    columns = result.front_columns()
    assert columns[:4] == ["trial", "criterion", "mse", "test_mse"] and columns[-1] == "bn_mse"
    assert "test_mse" in result.text() and result.hypervolume is None  # a lower-is-better metric has no bound
