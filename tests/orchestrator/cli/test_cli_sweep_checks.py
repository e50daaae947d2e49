"""Through the CLI: what a sweep or study refuses before it runs a trial (a held run dir, an unreachable target)."""
from __future__ import annotations

import pytest
import yaml

from cli_helpers import assert_bad_input
from orchestrator.experiment.lock import LOCK_FILE


@pytest.mark.parametrize("command", ["sweep", "compare"])
def test_a_second_sweep_or_study_into_a_held_run_dir_is_one_line(command, untrained, tmp_path, capsys, lock_holder):
    """Refused before anything loads, in one line naming the holder; the held run dir is left as it was."""
    run_dir = tmp_path / "run"
    holder = lock_holder(run_dir)
    if command == "sweep":
        config = tmp_path / "sweep.yaml"
        config.write_text(yaml.safe_dump({"checkpoint": str(untrained), "space": {"name": "uniform"},
                                          "run_dir": str(run_dir)}))
        argv = ["sweep", "--config", str(config)]
    else:
        argv = ["compare", "--checkpoint", str(untrained), "--criteria", "l1", "--flops-reductions", "0.5",
                "--run-dir", str(run_dir)]
    line = assert_bad_input(capsys, argv, "in use by a running", f"pid {holder.pid}")
    assert str(run_dir) in line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


@pytest.mark.fashion_mnist
def test_an_unreachable_flops_range_is_refused_before_any_trial(untrained, tmp_path, capsys):
    """A range no plan can reach is one line naming the key, and no sweep is left in the run dir."""
    run_dir = tmp_path / "run"
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"checkpoint": str(untrained), "run_dir": str(run_dir),
                                      "space": {"name": "uniform", "flops_reduction": [0.999, 0.9999],
                                                "flops_bounds": [0.0, 0.9999]}}))
    assert_bad_input(capsys, ["sweep", "--config", str(config), "--quiet"], "space.flops_reduction", "at most")
    assert not (run_dir / "tune").exists() and not (run_dir / "sweep.yaml").exists()
