"""Compare grids: criterion x FLOPs target x seed as Tune trials, each cell recovered with the
command's recipe, tabulated (mean and std over seeds) and plotted in MLflow."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.sweeps import CompareConfig, Tracker, TrialRecord, summarize_cells


def main_json(argv: list) -> dict:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main([str(a) for a in argv] + ["--json", "--quiet"])
    assert code == 0
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def baseline(trained_resnet20) -> Path:
    return trained_resnet20["out"]


@pytest.mark.fashion_mnist
def test_compare_grid_logs_a_table_and_a_plot(ray_session, baseline, tmp_path):
    run_dir = tmp_path / "cmp"
    argv = ["compare", "--checkpoint", baseline, "--criteria", "l1", "fpgm", "--flops-reductions", "0.4",
            "--seeds", "3", "--bn-batches", "2", "--calibration-images", "64", "--batch-size", "64",
            "--run-dir", run_dir, "--name", "cmp"]  # the default recipe otherwise: reconstruction on
    data = main_json(argv)
    rows = {(r["criterion"], r["flops_reduction"]): r for r in data["rows"]}
    assert set(rows) == {("l1", 0.4), ("fpgm", 0.4)}
    for row in rows.values():
        assert row["n"] == 1 and row["failed"] == 0 and row["test_accuracy_std"] == 0.0
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0
        assert abs(row["macs_reduction_mean"] - 0.4) <= 0.011
    tracker = Tracker(f"sqlite:///{run_dir}/mlflow.db", "prunesweep-compare", run_dir, kind="compare")
    assert tracker.find_parent() == data["parent_run_id"]
    runs = tracker.trial_runs()
    assert sorted((r.data.params["criterion"], r.data.params["seed"], r.info.status) for r in runs.values()) == [
        ("fpgm", "3", "FINISHED"), ("l1", "3", "FINISHED")]
    for run in runs.values():
        assert {"accuracy", "test_accuracy", "bn_accuracy", "macs", "reconstructed_accuracy",
                "bn_recalibrated_accuracy", "reconstructed_seconds"} <= set(run.data.metrics)
        assert run.data.metrics["accuracy"] == run.data.metrics["bn_recalibrated_accuracy"]  # no fine-tuning
    parent = tracker.client.get_run(data["parent_run_id"])
    assert parent.data.params["recipe.reconstruct"] == "True" and parent.data.params["recipe.bn_batches"] == "2"
    assert "recipe.seed" not in parent.data.params  # each cell's seed is the recipe's
    # where it ran and on what, as for a sweep
    assert parent.data.tags["prunesweep.device"] == "cpu" and parent.data.tags["prunesweep.torch"]
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["fashion-mnist"]
    artifacts = {a.path for a in tracker.client.list_artifacts(data["parent_run_id"], "compare")}
    assert artifacts == {"compare/table.txt", "compare/table.json", "compare/compare.png"}
    table = Path(tracker.client.download_artifacts(data["parent_run_id"], "compare/table.txt")).read_text()
    assert "test_accuracy_mean" in table and "fpgm" in table


def test_compare_table_is_mean_and_std_over_seeds():
    config = CompareConfig(checkpoint="x.pt", criteria=("l1", "fpgm"), flops_reductions=(0.3, 0.5), seeds=(0, 1, 2),
                           run_dir="/tmp/unused")
    records = []
    for criterion, target, seed, acc in [("l1", 0.3, 0, 0.5), ("l1", 0.3, 1, 0.7), ("l1", 0.3, 2, 0.6),
                                         ("fpgm", 0.5, 0, 0.4)]:
        params = {"criterion": criterion, "flops_reduction": str(target), "seed": str(seed)}
        records.append(TrialRecord(f"{criterion}{seed}", "t", "FINISHED", params, {"test_accuracy": acc, "accuracy": acc}))
    records.append(TrialRecord("bad", "t", "FAILED", {"criterion": "fpgm", "flops_reduction": "0.5", "seed": "1"}))
    rows = {(r["criterion"], r["flops_reduction"]): r for r in summarize_cells(config, records)}
    assert len(rows) == 4
    assert rows[("l1", 0.3)]["n"] == 3
    assert rows[("l1", 0.3)]["test_accuracy_mean"] == pytest.approx(0.6)
    assert rows[("l1", 0.3)]["test_accuracy_std"] == pytest.approx(0.1)
    assert rows[("fpgm", 0.5)]["n"] == 1 and rows[("fpgm", 0.5)]["failed"] == 1
    assert rows[("l1", 0.5)]["n"] == 0 and rows[("l1", 0.5)]["test_accuracy_mean"] is None
