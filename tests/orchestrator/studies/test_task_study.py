"""A 4-cell study on a task of one's own (``user_tasks:bands``, ``mse`` lower-is-better): its cells
report ``test_mse``, its tables, files and ranks are those of ``mse``."""
from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.studies import StudyConfig, run_study

TASK = {"task": "user_tasks:bands", "task_kwargs": {"bands": 2, "images": 2100}}


def test_a_study_compares_the_tasks_primary_metric(ray_session, tmp_path):
    from user_models import tiny_cnn

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_cnn(2, 1, width=4).state_dict(), weights)
    raw = {"name": "bands", **TASK,
           "checkpoints": [{"model": "user_models:tiny_cnn", "weights": str(weights), "model_kwargs": {"width": 4},
                            "label": "tiny"}],
           "criteria": ["random", "taylor"], "recipes": {"bn": {"reconstruct": False, "bn_batches": 1, "batch_size": 32}},
           "flops_reductions": [0.3, 0.5], "seeds": [0], "data": {"calibration_images": 32, "batch_size": 32},
           "run_dir": str(tmp_path / "study")}
    config = StudyConfig.from_dict(raw)
    assert config.to_dict()["task"] == "user_tasks:bands"
    result = run_study(config, progress=False)
    assert result.counts["finished"] == 4
    assert all(row["test_mse"] is not None and row["bn_mse"] is not None for row in result.tables.long)
    assert all("test_accuracy" not in row for row in result.tables.long)
    summary = result.tables.summary
    assert len(summary) == 4 and all(row["test_mse_mean"] is not None for row in summary)
    # rank 1 = the lowest mse
    by_criterion = {c: [r["test_mse_mean"] for r in summary if r["criterion"] == c] for c in ("random", "taylor")}
    best = min(by_criterion, key=lambda c: sum(by_criterion[c]))
    if sum(by_criterion["random"]) != sum(by_criterion["taylor"]):
        assert result.tables.ranks[0]["criterion"] == best
    assert "test mse" in result.tables.text() and "1 = lowest mse" in result.tables.text()
    header = (Path(config.run_dir) / "report" / "cells.csv").read_text().splitlines()[0].split(",")
    assert "test_mse" in header and "bn_mse" in header and "test_accuracy" not in header


def test_a_criterion_the_task_cannot_serve_is_refused_when_the_config_is_read(tmp_path):
    import pytest

    from orchestrator.experiment.checks import ConfigError

    raw = {"name": "bands", **TASK, "checkpoints": [{"model": "user_models:tiny_cnn", "label": "tiny"}],
           "criteria": ["l1", {"name": "apoz", "label": "apoz-max", "class_scores": "max"}],
           "recipes": {"bn": {"bn_batches": 1}}, "flops_reductions": [0.3], "seeds": [0], "significance": {"reference": "l1"},
           "run_dir": str(tmp_path / "study")}
    with pytest.raises(ConfigError, match="criteria.apoz-max: criterion 'apoz' reads per-class statistics, which "
                                          "need class labels; task 'user_tasks:bands' has none") as raised:
        StudyConfig.from_dict(raw)
    assert "\n" not in str(raised.value)
