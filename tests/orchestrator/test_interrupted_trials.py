"""A sweep stopped while trials run, through the ``prunesweep`` entry point with its own local Ray:

* Ctrl-C while two trials run: exit 0 with the resume line; MLflow holds no trial FINISHED
  without metrics (the running ones are left for the resume), and ``--resume`` then has every
  trial exactly once;
* however the driver ends (Ctrl-C, a SIGKILL), no process of the Ray session it started is left;
  the watchdog behind that alone, without Ray.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.distributed import network as private_network
from orchestrator.distributed import relay
from orchestrator.experiment import TAG_TRIAL_NUMBER
from orchestrator.sweeps import SweepConfig
from resume_helpers import wait_for, wait_while_running
from sweep_helpers import sweep_config, tracker_of

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
SPACE = {"name": "uniform", "criteria": ["l1"], "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.95]}


@pytest.fixture
def ray_root():
    """A folder of Ray's sessions for one test (``$RAY_TMPDIR``): short, for Ray's socket paths."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def prunesweep(ray_root: Path, *args: str) -> subprocess.Popen:
    """``python -m orchestrator.cli ARGS`` as a user's shell starts it: its own Ray (in ``ray_root``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", private_network.ACTIVE_ENV, relay.RELAY_ENV)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                            env={**env, "RAY_TMPDIR": str(ray_root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def session_processes(ray_root: Path) -> list[str]:
    """The command lines of the live processes that name a Ray session in ``ray_root``: in their
    command line (Ray's services), or in a file they hold open (the agents and workers, whose
    command lines Ray replaces by titles such as ``ray::DashboardAgent``, write logs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            files = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # not a process, or gone
            continue
        if str(ray_root) in cmdline or any(f.startswith(str(ray_root)) for f in files):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def trials(run_dir: Path) -> tuple[int, int]:
    """(trials that reported, trials that run) in the screening stage's trial folders."""
    tune = run_dir / "tune"
    folders = [p.parent for p in tune.glob("*/params.json")] if tune.is_dir() else []
    reported = sum((f / "result.json").is_file() and (f / "result.json").stat().st_size > 0 for f in folders)
    return reported, len(folders) - reported


def write_config(tmp_path: Path, checkpoint: Path, trials: int) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    raw = sweep_config(checkpoint, run_dir, name="interrupted", space=SPACE, trials=trials, seed=4, warm_start=False)
    raw["recipe"]["finetune_subset"] = 2048  # trials long enough to be interrupted mid-run
    path = tmp_path / "interrupted.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, run_dir


def stop(driver: subprocess.Popen, signum: int) -> tuple[str, str]:
    try:
        driver.send_signal(signum)
        return driver.communicate(timeout=TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()


@pytest.mark.fashion_mnist
def test_ctrl_c_leaves_the_running_trials_to_the_resume_and_no_ray_process(trained_resnet20, tmp_path, ray_root):
    path, run_dir = write_config(tmp_path, trained_resnet20["out"], trials=4)
    driver = prunesweep(ray_root, "sweep", "--config", str(path), "--quiet")
    two_running = lambda: trials(run_dir)[0] >= 1 and trials(run_dir)[1] >= 2  # noqa: E731
    wait_while_running(driver, two_running, time.monotonic() + TIMEOUT_S, "a trial ended and two ran")
    assert session_processes(ray_root), "the driver's Ray names its session folder"
    out, err = stop(driver, signal.SIGINT)
    assert driver.returncode == 0, err[-3000:]
    assert f"INTERRUPTED, resume with: prunesweep sweep --resume {run_dir}" in out, out
    assert session_processes(ray_root) == [], "the driver's Ray outlived it"
    config = SweepConfig.from_dict(yaml.safe_load((run_dir / "sweep.yaml").read_text()))
    logged = tracker_of(config).trial_runs().values()
    # the trials that ended, with their results; not the two that were running
    assert 1 <= len(logged) < 4 and {r.info.status for r in logged} == {"FINISHED"}, [r.info.run_name for r in logged]
    assert all("accuracy" in r.data.metrics for r in logged), {r.info.run_name: r.data.metrics for r in logged}

    resumed = prunesweep(ray_root, "sweep", "--resume", str(run_dir), "--json", "--quiet")
    out, err = resumed.communicate(timeout=TIMEOUT_S)
    assert resumed.returncode == 0, err[-3000:]
    data = json.loads(out)
    assert data["complete"] and data["counts"]["trials"] == 4 and data["counts"]["finished"] == 4
    runs = tracker_of(config).trial_runs().values()
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs) == [0, 1, 2, 3]  # each trial once
    assert all("accuracy" in r.data.metrics for r in runs)
    assert session_processes(ray_root) == []


@pytest.mark.fashion_mnist
def test_a_killed_driver_leaves_no_ray_process(trained_resnet20, tmp_path, ray_root):
    path, run_dir = write_config(tmp_path, trained_resnet20["out"], trials=2)
    driver = prunesweep(ray_root, "sweep", "--config", str(path), "--quiet")
    wait_while_running(driver, lambda: trials(run_dir)[1], time.monotonic() + TIMEOUT_S, "a trial ran")
    assert session_processes(ray_root)
    stop(driver, signal.SIGKILL)
    assert driver.returncode == -signal.SIGKILL
    # Ray's own services go with the driver at once; the watchdog ends the agents and workers left
    wait_for(lambda: not session_processes(ray_root), time.monotonic() + 30, "the Ray processes to end")


def test_the_processes_of_a_watched_session_end_with_a_killed_driver(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from orchestrator.distributed import watchdog
        named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {str(session)!r}])
        writing = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                   stdout=open({str(session / "out.log")!r}, "w"))
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        watchdog.start({str(session)!r})
        print(named.pid, writing.pid, other.pid, flush=True)
        time.sleep(300)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = [int(pid) for pid in driver.stdout.readline().split()]
        driver.kill()
        driver.wait(timeout=30)
        wait_for(lambda: not alive(pids[0]) and not alive(pids[1]), time.monotonic() + 30,
                 "the session's processes to end")
        assert alive(pids[2])  # it names no session folder: not the watchdog's
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
