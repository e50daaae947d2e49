"""SIGTERM to a sweep's driver ends it the way Ctrl-C does: Tune's state saved, the resume hint,
exit status 143 and no native stack dump; ``--resume`` then finishes it with every trial once."""
from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.experiment import TAG_TRIAL_NUMBER
from orchestrator.sweeps import SweepConfig
from resume_helpers import terminate_once
from sweep_helpers import main_json, sweep_config, tracker_of

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.fashion_mnist
def test_sigterm_stops_the_sweep_like_ctrl_c_and_resume_finishes_it(ray_session, trained_resnet20, tmp_path):
    run_dir = tmp_path / "run"
    space = {"name": "uniform", "criteria": ["l1"], "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.95]}
    raw = sweep_config(trained_resnet20["out"], run_dir, name="sigterm", space=space, trials=3, seed=2)
    raw["sweep"]["concurrency"] = 1
    raw["recipe"]["finetune_subset"] = 4096  # trials long enough to be stopped mid-run
    path = tmp_path / "sigterm.yaml"
    path.write_text(yaml.safe_dump(raw))
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(path), "--address",
                               ray_session.get_runtime_context().gcs_address, "--quiet"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = lambda: glob.glob(str(run_dir / "tune" / "*" / "checkpoint_000000" / "metrics.json"))  # noqa: E731
    terminate_once(driver, finished, "sweep", run_dir)

    data = main_json(["sweep", "--resume", run_dir])
    assert data["complete"] and data["counts"]["trials"] == 3 and data["counts"]["finished"] == 3
    config = SweepConfig.from_dict(yaml.safe_load((run_dir / "sweep.yaml").read_text()))
    runs = tracker_of(config).trial_runs()
    assert len(runs) == 3 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs.values()) == [0, 1, 2]
