"""A run directory copied (``cp -r``) or moved (``mv``) is read and resumed from its own files:
`pareto` (and `--export`) reads the copy's database and checkpoints, never the original's, an
explicit `--tracking-uri` wins, and `sweep --resume` of a copy logs into the copy's store only."""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from orchestrator.experiment import TAG_KIND, TAG_RUN_DIR, Tracker
from orchestrator.experiment.tracking import TAG_PARENT
from sweep_helpers import file_digests, main_json

pytestmark = pytest.mark.fashion_mnist


@pytest.fixture(scope="module")
def original(finished_sweep) -> dict:
    """The finished sweep's run directory, its front as `pareto` reads it, and its files' digests."""
    run_dir = Path(finished_sweep.run_dir)
    data = main_json(["pareto", run_dir])
    assert data["front"], "the sweep has a front to compare"
    return {"run_dir": run_dir, "pareto": data, "digests": file_digests(run_dir)}


def copy_of(original: dict, dest: Path) -> Path:
    shutil.copytree(original["run_dir"], dest)
    return dest


def front_of(data: dict) -> list:
    return [(row["trial_id"], row.get("test_accuracy"), row["accuracy"]) for row in data["front"]]


def test_a_copy_reads_its_own_database_and_checkpoints(original, tmp_path):
    copy = copy_of(original, tmp_path / "copy")
    database = original["run_dir"] / "mlflow.db"
    away = database.rename(database.with_name("mlflow.db.away"))  # reading the original's would fail
    try:
        data = main_json(["pareto", copy])
    finally:
        away.rename(database)
    assert data["run_dir"] == str(copy) and data["tracking_uri"] == f"sqlite:///{copy / 'mlflow.db'}"
    assert front_of(data) == front_of(original["pareto"]) and data["counts"] == original["pareto"]["counts"]
    for row in data["front"]:
        assert row["checkpoint"].startswith(f"{copy}/") and (Path(row["checkpoint"]) / "pruned.pt").is_file()
    assert file_digests(original["run_dir"]) == original["digests"]


def test_a_moved_run_dir_answers_and_exports_its_front(original, tmp_path):
    moved = copy_of(original, tmp_path / "before").rename(tmp_path / "after")
    data = main_json(["pareto", moved])
    assert data["run_dir"] == str(moved) and front_of(data) == front_of(original["pareto"])
    exported = main_json(["pareto", moved, "--export", tmp_path / "onnx"])["export"]
    assert sorted(e["trial"] for e in exported) == sorted(row["trial"] for row in data["front"])
    assert all(Path(e["file"]).is_file() and e["check"]["passed"] for e in exported)
    assert not (tmp_path / "before").exists()  # nothing is written where the run directory was


def test_an_explicit_tracking_uri_wins_over_the_run_dirs_database(original, tmp_path):
    moved = copy_of(original, tmp_path / "before").rename(tmp_path / "after")
    elsewhere = tmp_path / "elsewhere.db"
    (moved / "mlflow.db").rename(elsewhere)
    data = main_json(["pareto", moved, "--tracking-uri", f"sqlite:///{elsewhere}"])
    assert data["tracking_uri"] == f"sqlite:///{elsewhere}" and front_of(data) == front_of(original["pareto"])
    assert not (moved / "mlflow.db").exists()


def test_resuming_a_copy_logs_into_the_copy_only(original, tmp_path):
    """In the process that read the original (MLflow keeps each run's artifact store per process,
    by run id, and the copy's runs have the original's ids)."""
    copy = copy_of(original, tmp_path / "copy")
    data = main_json(["sweep", "--resume", copy])
    assert data["run_dir"] == str(copy) and data["parent_run_id"] == original["pareto"]["parent_run_id"]
    assert [row["trial_id"] for row in data["front"]] == [row["trial_id"] for row in original["pareto"]["front"]]
    assert file_digests(original["run_dir"]) == original["digests"]
    client = Tracker(f"sqlite:///{copy / 'mlflow.db'}", "prunesweep", copy).client
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`{TAG_KIND}` = 'sweep'")
    parents = [r for r in runs if TAG_PARENT not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags[TAG_RUN_DIR] == str(original["run_dir"])
    assert len(runs) - 1 == original["pareto"]["counts"]["trials"]  # every trial once
    with contextlib.closing(sqlite3.connect(copy / "mlflow.db")) as db:
        locations = [row[0] for row in db.execute("SELECT artifact_uri FROM runs")]
    assert locations and all(uri.startswith((copy / "mlartifacts").as_uri() + "/") for uri in locations)
