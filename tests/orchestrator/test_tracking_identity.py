"""What identifies a trial's MLflow run: Tune's trial id (sweeps), or its run name where names are
unique (a study's cells), so that a cell Tune starts again under a new trial id after a kill
updates its run instead of adding a second one. Tracker only, on a SQLite store in tmp_path."""
from __future__ import annotations

import pytest

from orchestrator.experiment.tracking import Tracker, TrialRecord


@pytest.mark.parametrize("unique_names, runs", [(False, 2), (True, 1)])
def test_a_trial_logged_again_under_a_new_id_adds_a_run_only_without_unique_names(tmp_path, unique_names, runs):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "prunesweep", tmp_path / "run", kind="study",
                      unique_names=unique_names)
    tracker.start_parent("study")
    first = tracker.log_trial(TrialRecord("abc", "base:l1:uniform:bn:0.5:s0", "FINISHED", metrics={"accuracy": 0.5}))
    again = tracker.log_trial(TrialRecord("xyz", "base:l1:uniform:bn:0.5:s0", "FINISHED", metrics={"accuracy": 0.5}))
    assert len(tracker.trial_runs()) == len(tracker.read_trials()) == runs
    assert (first == again) == unique_names
    # the record keeps the trial id it was first logged under
    assert tracker.read_trials()[0].trial_id == "abc"


def test_runs_are_keyed_by_name_with_unique_names_else_by_trial_id(tmp_path):
    for unique_names, key in ((False, "abc"), (True, "cell-1")):
        tracker = Tracker(f"sqlite:///{tmp_path}/m{unique_names}.db", "prunesweep", tmp_path / "run",
                          unique_names=unique_names)
        tracker.start_parent("grid")
        tracker.log_trial(TrialRecord("abc", "cell-1", "FINISHED", metrics={"accuracy": 0.5}))
        assert list(tracker.trial_runs()) == [key] and tracker.trial_key("abc", "cell-1") == key
