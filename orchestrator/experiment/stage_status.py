"""What Tune's experiment snapshot in a run directory says about a stage, read without Ray or
MLflow (for a hint that must not wait on either)."""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["stage_ended"]

#: the trial statuses of an ended trial in Tune's snapshot
ENDED = frozenset({"TERMINATED", "ERROR"})


def stage_ended(folder: str | os.PathLike, expected: int) -> bool:
    """Whether the newest Tune snapshot in ``folder`` records ``expected`` trials (or more), every
    one ended: False for a stage interrupted, killed, or never started. Tune saves a trial that
    was running when its experiment was interrupted as running, so such a stage reads unended."""
    try:
        snapshots = sorted(Path(folder).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime_ns)
        if not snapshots:
            return False
        trials = [json.loads(state) for state, _ in json.loads(snapshots[-1].read_text())["trial_data"]]
    except (OSError, ValueError, KeyError, TypeError):  # replaced or being written: the stage is not over
        return False
    return len(trials) >= expected and all(t.get("status") in ENDED for t in trials)
