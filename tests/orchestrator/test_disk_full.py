"""A full disk or a read-only filesystem under a sweep's run dir: one ``error:`` line naming the
path (exit status 2) with the resume hint, no traceback; once space is freed ``--resume``
finishes the sweep with every trial once. Tune's experiment state cut short: ``--resume``
restores the last copy that reads back, or refuses in one line naming the file. Any other
command whose write such a filesystem refuses ends in one line too.

The full disk is a size-limited tmpfs (mounting one needs root: skipped elsewhere)."""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.cli import info
from orchestrator.experiment import TAG_TRIAL_NUMBER, Tracker
from orchestrator.sweeps import SweepConfig
from resume_helpers import wait_while_running
from sweep_helpers import main_json, sweep_config

REPO = Path(__file__).resolve().parents[2]
SPACE = {"name": "uniform", "criteria": ["l1"], "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.9]}


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` for the block; the test is skipped where this
    user cannot mount one."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("a size-limited filesystem needs a tmpfs mount (root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """A file that takes all the space left on ``folder``'s filesystem."""
    ballast = folder / "ballast"
    chunk = bytes(1 << 20)
    with open(ballast, "wb", buffering=0) as handle:
        with pytest.raises(OSError) as full:
            while True:
                handle.write(chunk)
    assert full.value.errno == errno.ENOSPC
    return ballast


def write_config(tmp_path: Path, checkpoint: Path, run_dir: Path, trials: int) -> Path:
    raw = sweep_config(checkpoint, run_dir, name="disk", space=SPACE, trials=trials, seed=3)
    raw["sweep"]["concurrency"] = 1
    path = tmp_path / "disk.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(argv: list) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``prunesweep ARGV --quiet`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(a) for a in argv] + ["--quiet"])
    return code, out.getvalue(), err.getvalue()


def trial_numbers(run_dir: Path) -> list[int]:
    """The trial numbers the SQLite store in ``run_dir`` holds for its sweep (which may have run
    elsewhere: a copy), each run FINISHED."""
    config = SweepConfig.from_dict(yaml.safe_load((run_dir / "sweep.yaml").read_text()))
    tracker = Tracker(f"sqlite:///{run_dir / 'mlflow.db'}", "prunesweep", run_dir, recorded_run_dir=config.run_dir)
    assert tracker.find_parent() is not None
    runs = tracker.trial_runs().values()
    assert {r.info.status for r in runs} == {"FINISHED"}
    return sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs)


def _chained(error: BaseException, wrapper: BaseException) -> BaseException:
    try:
        try:
            raise error
        except BaseException as inner:
            raise wrapper from inner
    except BaseException as outer:
        return outer


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/model.pt"),
     "error: no space left on device: /data/run/model.pt"),
    (_chained(OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/run/sweep.yaml"), RuntimeError("wrapped")),
     "error: read-only file system: /data/run/sweep.yaml"),
    # Ray carries a trial's error as its traceback text, MLflow SQLite's as its message
    (RuntimeError("Failure # 1\nTraceback (most recent call last):\nOSError: [Errno 122] Disk quota exceeded: "
                  "'/data/run/tune/trial/checkpoint_000000/model.pt'\n"),
     "error: disk quota exceeded: /data/run/tune/trial/checkpoint_000000/model.pt"),
    (RuntimeError("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO runs]"),
     "error: no space left on device"),
])
def test_a_disk_error_wrapped_anywhere_is_one_line(error, line, capsys, monkeypatch):
    def broken(args):
        raise error

    monkeypatch.setattr(info, "run", broken)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err


@pytest.mark.fashion_mnist
def test_a_read_only_run_dir_is_one_line_naming_it(trained_resnet20, tmp_path):
    run_dir = tmp_path / "disk" / "run"
    with small_filesystem(tmp_path / "disk", "8m"):
        run_dir.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "disk")], check=True)
        config = write_config(tmp_path, trained_resnet20["out"], run_dir, trials=2)
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(config),
                               "--ray-network", "host", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: run_dir: read-only file system: {run_dir / '.prunesweep.lock'}; make it writable, then run it again")


@pytest.mark.fashion_mnist
def test_any_command_refused_a_write_by_a_read_only_filesystem_is_one_line(fashion_mnist, tmp_path):
    with small_filesystem(tmp_path / "disk", "8m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--model", "resnet20", "--epochs", "1",
                               "--train-subset", "64", "--calibration-size", "64", "--test-subset", "64",
                               "--out", str(disk / "base.pt"), "--quiet"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"error: read-only file system: {disk}/"), done.stderr


@pytest.mark.fashion_mnist
def test_a_run_dir_without_room_for_the_sweep_is_refused_before_it_starts(trained_resnet20, tmp_path):
    run_dir = tmp_path / "disk" / "run"
    with small_filesystem(tmp_path / "disk", "30m"):
        config = write_config(tmp_path, trained_resnet20["out"], run_dir, trials=2)
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(config),
                               "--ray-network", "host", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert not (run_dir / "tune").exists()
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"error: run_dir: {run_dir} has 30.0 MiB free but a sweep needs about 64.0 MiB; free space or choose another run_dir"]


@pytest.mark.fashion_mnist
def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_finishes_it(ray_session, trained_resnet20, tmp_path):
    with small_filesystem(tmp_path / "disk", "160m") as disk:
        run_dir = disk / "run"
        config = write_config(tmp_path, trained_resnet20["out"], run_dir, trials=3)
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(config),
                                   "--address", ray_session.get_runtime_context().gcs_address, "--quiet"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            finished = lambda: glob.glob(str(run_dir / "tune" / "*" / "checkpoint_000000" / "metrics.json"))  # noqa: E731
            wait_while_running(driver, finished, time.monotonic() + 600, "a trial finished")
            ballast = fill(disk)
            out, err = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: run_dir: no space left on device") and "free there" in line, line
        assert line.endswith(f"free space, then resume with `prunesweep sweep --resume {run_dir}`"), line
        assert not (run_dir / ".prunesweep.lock").exists()

        ballast.unlink()
        data = main_json(["sweep", "--resume", run_dir])
        assert data["complete"] and data["counts"]["trials"] == 3 and data["counts"]["finished"] == 3
        assert trial_numbers(run_dir) == [0, 1, 2]


@pytest.mark.fashion_mnist
def test_a_cut_short_tune_state_resumes_from_its_copy_or_is_one_line(finished_sweep, tmp_path):
    # a copy of the session's finished 2-trial sweep, to cut short (a sweep of its own adds nothing)
    run_dir = Path(shutil.copytree(finished_sweep.run_dir, tmp_path / "run"))
    copies = run_dir / ".tune-backup"
    assert (copies / "tune").is_dir()
    [state] = (run_dir / "tune").glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy the full disk cut short

    shutil.move(copies, tmp_path / "copies")
    code, _, err = run_cli(["sweep", "--resume", run_dir])
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: resume: {state} does not read back (cut short, e.g. by a full disk) and no readable copy of it "
        "is kept: the sweep cannot be resumed; run it again in another run_dir")
    assert "Traceback" not in err

    shutil.move(tmp_path / "copies", copies)
    code, out, err = run_cli(["sweep", "--resume", run_dir])
    assert code == 0 and "INTERRUPTED" not in out, err[-3000:]
    assert f"note: {state} did not read back" in err
    assert trial_numbers(run_dir) == [0, 1]  # restored, not started over
