"""What the kill-and-resume tests of sweeps and studies share: waiting for Tune to have
recorded an ended trial before the driver is killed."""
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
