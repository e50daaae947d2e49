"""SIGTERM to a study's driver ends it the way Ctrl-C does: Tune's state saved, the resume hint,
exit status 143, no native stack dump, no cell logged FINISHED without metrics, the run dir's lock
let go; ``compare --resume`` then finishes it with every cell once in MLflow."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.studies import StudyConfig, study_cells
from resume_helpers import snapshot_with_an_ended_trial, terminate_once
from study_helpers import tiny_study, tracker_of

pytestmark = pytest.mark.fashion_mnist
REPO = Path(__file__).resolve().parents[2]


def test_sigterm_stops_a_study_like_ctrl_c_and_resume_finishes_it(ray_session, tmp_path, monkeypatch):
    raw = tiny_study(tmp_path, "sigterm", seeds=[0, 1, 2, 3])  # 16 cells, one at a time
    raw["checkpoints"] = raw["checkpoints"][:1]
    raw["execution"] = {"concurrency": 1}
    path = tmp_path / "sigterm.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "sigterm"
    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "compare", "--config", str(path),
                               "--address", ray_session.get_runtime_context().gcs_address, "--quiet"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    terminate_once(driver, lambda: snapshot_with_an_ended_trial(run_dir), "compare", run_dir)
    config = StudyConfig.from_dict(yaml.safe_load((run_dir / "study.yaml").read_text()))
    logged = tracker_of(config).trial_runs().values()
    assert len(logged) < 16, "stopped mid-way"
    assert all(run.data.metrics for run in logged if run.info.status == "FINISHED")

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert cli.main(["compare", "--resume", str(run_dir), "--json", "--quiet"]) == 0
    assert json.loads(buffer.getvalue())["counts"]["finished"] == 16
    runs = tracker_of(config).trial_runs().values()
    assert sorted(r.info.run_name for r in runs) == sorted(c.id for c in study_cells(config))
    assert {r.info.status for r in runs} == {"FINISHED"} and all(r.data.metrics for r in runs)
