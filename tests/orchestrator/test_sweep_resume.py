"""`prunesweep sweep --resume` after the driver was SIGKILLed: nothing lost, nothing run twice.

Each sweep runs one trial at a time on the session's Ray runtime and its own SQLite store; the
driver is a separate process (``python -m orchestrator.cli sweep``) so that it can be killed.
"""
from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.experiment import TAG_CHECKPOINT, TAG_TRIAL_NUMBER, Tracker
from orchestrator.sweeps import SweepConfig
from resume_helpers import (
    ran_once,
    snapshot_with_an_ended_trial,
    terminated_in_snapshot,
    wait_for,
    wait_while_running,
)
from sweep_helpers import main_json, sweep_config, tracker_of

REPO = Path(__file__).resolve().parents[2]


def _finished_trial_dirs(run_dir: Path) -> set[str]:
    return {Path(p).parent.parent.name for p in glob.glob(str(run_dir / "tune" / "*" / "checkpoint_000000" / "metrics.json"))}


def _start_driver(path: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(path), "--address", address, "--quiet"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _kill(driver: subprocess.Popen) -> None:
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL


@pytest.mark.fashion_mnist
def test_resume_after_sigkill_loses_and_repeats_nothing(ray_session, trained_resnet20, tmp_path):
    run_dir = tmp_path / "run"
    # every trial fine-tunes one epoch on 4,096 images, so that the one running at the kill is still
    # running after the two snapshots the test waits for
    space = {"name": "uniform", "criteria": ["l1", "fpgm"], "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.95]}
    path = tmp_path / "resume.yaml"
    # one trial at a time: at the kill, trial 0 has finished, trial 1 is running and trial 2 is not yet
    # sampled, so the resumed sweep restarts a running trial AND asks the restored Optuna study for more;
    # three objectives, latency included
    objectives = {"accuracy": "max", "macs": "min", "latency_ms": "min"}
    raw = sweep_config(trained_resnet20["out"], run_dir, name="resume", space=space, trials=3, seed=1,
                       objectives=objectives)
    raw["sweep"]["concurrency"] = 1
    raw["recipe"]["finetune_subset"] = 4096
    path.write_text(yaml.safe_dump(raw))
    driver = _start_driver(path, ray_session.get_runtime_context().gcs_address)
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine: the first trial alone can take minutes
        wait_while_running(driver, lambda: _finished_trial_dirs(run_dir), deadline, "a trial finished")
        # an experiment snapshot (every second during a sweep) records the finished trial, and the
        # next one has been written since, so that snapshot (searcher state included) is complete
        recorded = wait_for(lambda: snapshot_with_an_ended_trial(run_dir), deadline, "a snapshot")
        wait_for(lambda: (snapshot_with_an_ended_trial(run_dir) or 0) > recorded, deadline, "the next snapshot")
        started = glob.glob(str(run_dir / "tune" / "sweep_trial_*"))
        _kill(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    before_dirs = _finished_trial_dirs(run_dir)
    table_built = (run_dir / "baseline" / "latency-table.json").stat().st_mtime
    assert len(before_dirs) == 1, "the sweep was interrupted with trial 1 running"
    assert len(started) <= 2, "trial 2 is sampled only after the resume"
    config = SweepConfig.from_dict(yaml.safe_load((run_dir / "sweep.yaml").read_text()))
    before_runs = {tid: run for tid, run in tracker_of(config).trial_runs().items()}
    assert before_runs, "finished trials were logged before the kill"

    # the run directory moves before the resume: its own database, checkpoints and Tune state are
    # found where it is now, and the restored searcher (which samples trial 2) still has its space
    moved = run_dir.rename(tmp_path / "moved")
    data = main_json(["sweep", "--resume", moved])
    assert data["complete"] and data["counts"]["trials"] == 3 and data["counts"]["finished"] == 3
    assert data["objectives"] == objectives and data["run_dir"] == str(moved)
    # latency on the default target (onnxruntime, CPU, batch 1, one thread): trials predict it from
    # the table built before the kill (read back, not rebuilt), the front is measured, the error shown
    assert data["latency"]["runtime"] == "onnxruntime" and data["latency"]["batch"] == 1
    assert data["baseline"]["latency_ms"] > 0 and table_built == (moved / "baseline" / "latency-table.json").stat().st_mtime
    assert all(row["latency_ms"] == row["latency_predicted_ms"] > 0 for row in data["front"])
    assert all(row["latency_measured_ms"] > 0 and row["latency_error"] == pytest.approx(
        row["latency_predicted_ms"] / row["latency_measured_ms"] - 1) for row in data["front"])
    read_back = main_json(["pareto", moved, "--objective", "latency"])
    assert read_back["objectives"] == {"accuracy": "max", "latency_ms": "min"}
    assert {r["trial"]: r["latency_measured_ms"] for r in read_back["front"]} == {
        r["trial"]: r["latency_measured_ms"] for r in data["front"] if r["trial"] in {t["trial"] for t in read_back["front"]}}
    assert all(row["checkpoint"].startswith(f"{moved}/") for row in data["front"])
    assert not run_dir.exists()  # nothing written where it was

    # Tune: exactly 3 trials, each ran to completion once (one result, one checkpoint)
    trial_dirs = [Path(p) for p in glob.glob(str(moved / "tune" / "sweep_trial_*"))]
    assert len(trial_dirs) == 3
    assert all(ran_once(folder) >= 1 for folder in trial_dirs)
    assert before_dirs <= {p.name for p in trial_dirs}
    # MLflow: 3 nested runs, one per trial id and per Optuna trial number, all FINISHED
    tracker = Tracker(f"sqlite:///{moved / 'mlflow.db'}", "prunesweep", moved, recorded_run_dir=config.run_dir)
    assert tracker.find_parent() is not None
    runs = tracker.trial_runs()
    assert len(runs) == 3 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs.values()) == [0, 1, 2]
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`prunesweep.kind` = 'sweep'")
    parents = [r for r in parents if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["prunesweep.run_dir"] == config.run_dir  # where it started
    # the trial finished before the kill was not re-run: same run, same result
    for trial_id, run in before_runs.items():
        assert runs[trial_id].info.run_id == run.info.run_id
        assert runs[trial_id].data.metrics["accuracy"] == run.data.metrics["accuracy"]
        assert runs[trial_id].data.metrics["trial_seconds"] == run.data.metrics["trial_seconds"]


@pytest.mark.fashion_mnist
def test_a_trial_finished_but_unrecorded_at_the_kill_reports_its_saved_result_instead_of_running_again(
        ray_session, trained_resnet20, tmp_path):
    run_dir = tmp_path / "run"
    space = {"name": "uniform", "criteria": ["l1"], "finetune_epochs": [0, 0], "flops_bounds": [0.0, 0.95]}
    raw = sweep_config(trained_resnet20["out"], run_dir, name="unrecorded", space=space, trials=2, seed=0)
    raw["sweep"]["concurrency"] = 1
    path = tmp_path / "unrecorded.yaml"
    path.write_text(yaml.safe_dump(raw))
    driver = _start_driver(path, ray_session.get_runtime_context().gcs_address)
    try:
        # killed the moment the first trial's checkpoint is on storage: before the driver has
        # handled its result, so that no experiment snapshot records the trial as finished
        wait_while_running(driver, lambda: _finished_trial_dirs(run_dir), time.monotonic() + 240,
                           "a trial finished", poll_s=0.005)
        _kill(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    (folder,) = _finished_trial_dirs(run_dir)
    snapshot = terminated_in_snapshot(run_dir)
    assert snapshot is not None, "no experiment snapshot to resume from"
    if folder in snapshot[1]:
        pytest.skip("Tune's snapshot recorded the trial as finished before the kill: the case under test did not arise")
    saved = json.loads((run_dir / "tune" / folder / "checkpoint_000000" / "metrics.json").read_text())

    data = main_json(["sweep", "--resume", run_dir])
    assert data["complete"] and data["counts"]["finished"] == 2
    # Tune restarted the trial in its folder; it reported the saved result, the trial's own time included
    assert ran_once(run_dir / "tune" / folder) >= 1
    assert json.loads((run_dir / "tune" / folder / "result.json").read_text().splitlines()[-1])["trial_seconds"] \
        == saved["trial_seconds"]
    config = SweepConfig.from_dict(yaml.safe_load((run_dir / "sweep.yaml").read_text()))
    runs = tracker_of(config).trial_runs()
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs.values()) == [0, 1]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    rerun = [r for r in runs.values() if r.data.metrics["trial_seconds"] == saved["trial_seconds"]]
    assert len(rerun) == 1 and rerun[0].data.metrics["accuracy"] == saved["accuracy"]
    # Tune holds the re-reported trial's checkpoint again: its model is there for the front
    assert (Path(rerun[0].data.tags[TAG_CHECKPOINT]) / "pruned.pt").is_file()
