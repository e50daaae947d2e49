"""`prunesweep sweep --resume` across the two stages of a two-stage sweep, through the CLI.

One sweep (4 screening trials, 2 candidates each refined in 1 and in 2 steps, one trial at a
time) is killed twice with SIGKILL: during screening (once a screening trial has finished), then,
resumed, during refinement (once a refined trial has finished); the second resume completes it.
Nothing may be lost or repeated: in MLflow every screening trial and every (candidate, steps)
refined trial is one nested run, and no trial that had finished before a kill runs again.
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

from orchestrator.experiment import TAG_TRIAL_NUMBER, Tracker
from orchestrator.sweeps import SweepConfig
from orchestrator.experiment.tracking import TAG_PARENT, TAG_REFINES, TAG_STAGE
from orchestrator.experiment.trial_meta import META_KEY
from resume_helpers import ran_once
from sweep_helpers import main_json

REPO = Path(__file__).resolve().parents[2]
SCREEN_TRIALS, CANDIDATES = 4, 2
#: the step counts every candidate is refined with (sweep.refine.recipe.steps)
REFINE_STEPS = [1, 2]
REFINED = CANDIDATES * len(REFINE_STEPS)
TIMEOUT_S = 300


def _prunesweep(*args) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *map(str, args)]


def _snapshot(experiment: Path) -> tuple[int, int] | None:
    """(write time, TERMINATED trials) of Tune's newest experiment snapshot in ``experiment``."""
    try:
        path = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime_ns)
        written = path.stat().st_mtime_ns
        trials = json.loads(path.read_text())["trial_data"]
    except (OSError, ValueError, KeyError):  # none yet, or being written
        return None
    return written, sum(json.loads(state).get("status") == "TERMINATED" for state, _ in trials)


def _finished_in(experiment: Path) -> tuple[int, int] | None:
    snapshot = _snapshot(experiment)
    return snapshot if snapshot and snapshot[1] else None


def _wait_for(condition, driver: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert driver.poll() is None, f"the driver ended before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def _run_until_a_trial_finished(argv: list[str], experiment: Path, log: Path) -> int:
    """Start ``argv``, SIGKILL it once a snapshot of ``experiment`` records a finished trial and
    the next snapshot has been written (so that one, searcher state included, is complete).
    Returns the trials that snapshot records as finished."""
    with log.open("w") as err:
        driver = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    try:
        written, finished = _wait_for(lambda: _finished_in(experiment), driver, log,
                                      f"a finished trial in {experiment.name}")
        _wait_for(lambda: (_snapshot(experiment) or (0, 0))[0] > written, driver, log, "the next snapshot")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert "Configuration for experiment" not in log.read_text(), "--quiet: no Tune output"
    return finished


def _nested_runs(tracker: Tracker) -> list:
    """Every nested run of the parent, duplicates included (``trial_runs`` keeps one per trial id)."""
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_PARENT}` = '{tracker.parent_run_id}'",
                                      max_results=1000)


def _ended(runs: list, stage: str) -> dict[str, object]:
    """{run name: run} of the FINISHED/FAILED runs of ``stage``; a name twice is an error."""
    named = [r for r in runs if r.data.tags.get(TAG_STAGE) == stage and r.info.status in ("FINISHED", "FAILED")]
    names = [r.info.run_name for r in named]
    assert len(names) == len(set(names)), f"{stage} runs logged twice: {sorted(names)}"
    return {r.info.run_name: r for r in named}


def _reported_once(experiment: Path) -> set[str]:
    """The trial folders of ``experiment`` that reported: each one run (:func:`ran_once`), and no
    trial number in two. A folder that never reported is a kill's orphan (Tune created the trial
    after its last snapshot, so the restored searcher asked that number again, in a new folder):
    it holds no checkpoint and its number reported elsewhere, so nothing was lost."""
    folders = [Path(p) for p in glob.glob(str(experiment / "sweep_trial_*"))]
    reported = [folder for folder in folders if ran_once(folder)]
    orphans = [folder for folder in folders if folder not in reported]

    def number(folder: Path) -> str | None:
        """The trial's run name (``trial-003``), from the config Tune writes when a trial starts
        (its folder name truncates the config); None for a folder no trial started in."""
        params = folder / "params.json"
        return str(json.loads(params.read_text())[META_KEY]) if params.exists() else None

    numbers = [number(f) for f in reported]
    assert None not in numbers, f"a trial reported without its config: {numbers}"
    assert len(numbers) == len(set(numbers)), f"a trial number reported twice: {sorted(numbers)}"
    assert {number(f) for f in orphans} - {None} <= set(numbers), "an orphaned trial was never run again"
    return {f.name for f in reported}


@pytest.mark.fashion_mnist
def test_killed_in_either_stage_a_two_stage_sweep_resumes_without_losing_or_repeating(
        ray_session, trained_resnet20, tmp_path):
    run_dir = tmp_path / "run"
    raw = {
        "name": "two-stage-resume", "checkpoint": str(trained_resnet20["out"]), "run_dir": str(run_dir),
        "data": {"calibration_images": 64, "batch_size": 64},
        "recipe": {"bn_batches": 2, "batch_size": 64, "finetune_subset": 64},
        # 3 warm starts (l1 at 3 targets), then Optuna samples: trial 3 is asked of the restored study
        "space": {"name": "uniform", "criteria": ["l1"], "flops_reduction": [0.2, 0.8],
                  "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.95]},
        # one trial at a time, so each kill falls inside a stage; refined trials fine-tune on all
        # 512 training images, long enough to kill the second one mid-way
        "sweep": {"trials": SCREEN_TRIALS, "concurrency": 1, "seed": 0,
                  "refine": {"candidates": CANDIDATES, "recipe": {"finetune_subset": 512, "steps": REFINE_STEPS}}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    config = SweepConfig.from_dict(raw)
    screen_dir, refine_dir = run_dir / "tune", run_dir / "tune-refine"

    # 1. killed during screening
    finished = _run_until_a_trial_finished(_prunesweep("sweep", "--config", path, "--address", address, "--quiet"),
                                           screen_dir, tmp_path / "first.log")
    assert finished < SCREEN_TRIALS and not refine_dir.exists(), "killed during screening"
    tracker = Tracker(config.tracking_uri, "prunesweep", config.run_dir)
    assert tracker.find_parent() is not None
    screened_early = _ended(_nested_runs(tracker), "screen")
    assert 1 <= len(screened_early) < SCREEN_TRIALS

    # 2. resumed: screening completes, refinement starts; killed during refinement
    resume = _prunesweep("sweep", "--resume", run_dir, "--address", address, "--quiet")
    refined = _run_until_a_trial_finished(resume, refine_dir, tmp_path / "second.log")
    assert refined < REFINED, "killed during refinement"
    runs = _nested_runs(tracker)
    screened = _ended(runs, "screen")
    refined_early = _ended(runs, "refine")
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in screened.values()) == list(range(SCREEN_TRIALS))
    assert 1 <= len(refined_early) < REFINED
    candidates = json.loads((run_dir / "refine-candidates.json").read_text())
    assert len(candidates) == REFINED and [c[META_KEY]["steps"] for c in candidates] == REFINE_STEPS * CANDIDATES
    screen_folders = _reported_once(screen_dir)
    assert len(screen_folders) == SCREEN_TRIALS

    # 3. resumed again (in this process, on the same Ray): refinement only, to the end
    data = main_json(["sweep", "--resume", run_dir])
    assert data["complete"] and data["counts"]["refined"] == REFINED
    assert data["counts"]["trials"] == SCREEN_TRIALS + REFINED

    runs = _nested_runs(tracker)
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    assert len(runs) == SCREEN_TRIALS + REFINED, sorted(r.info.run_name for r in runs)
    # every screening trial once; none that had finished ran again (same run, same result)
    final_screen = _ended(runs, "screen")
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in final_screen.values()) == list(range(SCREEN_TRIALS))
    for name, run in {**screened, **screened_early}.items():
        assert final_screen[name].info.run_id == run.info.run_id
        assert final_screen[name].data.metrics["trial_seconds"] == run.data.metrics["trial_seconds"]
    assert _reported_once(screen_dir) == screen_folders, "screening did not run again"
    # the K candidates refined once per step count, the one refined before the kill not again
    final_refine = _ended(runs, "refine")
    assert sorted(final_refine) == sorted(c[META_KEY]["name"] for c in candidates)
    assert json.loads((run_dir / "refine-candidates.json").read_text()) == candidates
    assert len({c[META_KEY]["refines"] for c in candidates}) == CANDIDATES
    for name, run in final_refine.items():
        assert run.info.status == "FINISHED" and run.data.tags[TAG_REFINES] == "trial-" + name.split("-")[1]
        steps = int(name.rsplit("-s", 1)[1])
        assert json.loads(run.data.tags["recipe"])["steps"] == steps
        # a progressive trial's steps reach MLflow, and its recovery time counts them
        assert ("step1_pruned_seconds" in run.data.metrics) == (steps > 1)
        if steps > 1:
            assert run.data.metrics["recover_seconds"] > run.data.metrics["step1_pruned_seconds"]
    for name, run in refined_early.items():
        assert final_refine[name].info.run_id == run.info.run_id
        assert final_refine[name].data.metrics["trial_seconds"] == run.data.metrics["trial_seconds"]
    assert len(_reported_once(refine_dir)) == REFINED
    # the front is the refined trials'; one parent run, FINISHED
    refined_ids = {r.info.run_id for r in final_refine.values()}
    assert data["front"] and all(row["run_id"] in refined_ids for row in data["front"])
    parents = tracker.client.search_runs([tracker.experiment_id], f"tags.`prunesweep.run_dir` = '{config.run_dir}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["trials_refined"] == REFINED
