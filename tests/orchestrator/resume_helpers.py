"""What the kill-and-resume tests of sweeps and studies share: waiting for Tune to have
recorded an ended trial before the driver is killed, and checking that no trial ran twice."""
from __future__ import annotations

import json
import time
from pathlib import Path


def terminated_in_snapshot(run_dir: Path) -> tuple[int, set[str]] | None:
    """(write time, trial folder names) of the TERMINATED trials Tune's experiment snapshot in
    ``run_dir/tune`` records, or None while there is no readable snapshot."""
    for path in (Path(run_dir) / "tune").glob("experiment_state-*.json"):
        try:
            written = path.stat().st_mtime_ns
            trials = [json.loads(state) for state, _ in json.loads(path.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError):  # being written or synced
            continue
        return written, {t["relative_logdir"] for t in trials if t.get("status") == "TERMINATED"}
    return None


def snapshot_with_an_ended_trial(run_dir: Path) -> int | None:
    """The write time of Tune's experiment snapshot in ``run_dir/tune`` if it records a TERMINATED
    trial, else None."""
    snapshot = terminated_in_snapshot(run_dir)
    return snapshot[0] if snapshot and snapshot[1] else None


def wait_for(condition, deadline: float, what: str):
    """``condition()``'s first truthy value before ``deadline`` (time.monotonic), else an AssertionError."""
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_while_running(driver, ended, deadline: float, what: str, poll_s: float = 0.2) -> None:
    """Poll ``ended()`` every ``poll_s`` seconds until it is truthy, the driver process exits or
    ``deadline`` (time.monotonic) passes; the driver must still be running then."""
    while not ended() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(poll_s)
    assert driver.poll() is None, f"the driver ended before {what}: {driver.stderr.read().decode()[-2000:]}"


def ran_once(folder: Path) -> int:
    """How many reports a Tune trial folder holds (0: it never reported), checked to be one run:
    every report carries the same result and the folder one checkpoint. A trial killed between its
    report and the snapshot that would record it restarts in the same folder on resume and reports
    its saved result again (the trial's own ``trial_seconds`` included) instead of running again."""
    path = folder / "result.json"
    reports = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    runs = {(r["accuracy"], r.get("trial_seconds")) for r in reports}
    assert len(runs) <= 1, f"{folder.name} ran {len(runs)} times: {sorted(runs)}"
    assert sorted(p.name for p in folder.glob("checkpoint_*")) == (["checkpoint_000000"] if reports else [])
    return len(reports)


def terminate_once(driver, ended, command: str, run_dir: Path) -> None:
    """SIGTERM the ``prunesweep command`` ``driver`` (text pipes) once ``ended()`` holds, and check
    it stopped as Ctrl-C does: exit 143, the resume hint, no native stack dump or traceback, and
    the run directory's lock let go."""
    import signal

    from orchestrator.experiment.lock import LOCK_FILE

    try:
        wait_while_running(driver, ended, time.monotonic() + 600, "the first trial ended")
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143, err[-2000:]
    assert f"INTERRUPTED by SIGTERM, resume with: prunesweep {command} --resume {run_dir}" in out, out
    assert "*** SIGTERM received" not in err and "Traceback" not in err
    assert not (Path(run_dir) / LOCK_FILE).exists()
