"""Criterion comparison studies end to end on tiny models: every cell once in MLflow, scores
computed once per (checkpoint, criterion, seed), a failing criterion's cells FAILED while the
rest finish, tables and plots logged, and the report read back from MLflow (from a moved copy of
the run directory too, writing nothing).

The baselines are two ``user_models:tiny_cnn`` weight files (two "training seeds") on real
Fashion-MNIST (skipped without it); the studies run on the session's Ray runtime."""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.studies import (StudyConfig, run_study, score_keys, study_cells, study_parent_metrics,
                                  study_phase_times)
from orchestrator.studies.scores import SCORES_FOLDER, read_computations
from orchestrator.experiment.trial_meta import META_KEY
from crashing import register_crashing_criterion
from study_helpers import tiny_study, tiny_weights, tracker_of
from resume_helpers import snapshot_with_an_ended_trial, terminated_in_snapshot, wait_for, wait_while_running
from sweep_helpers import assert_refused, file_digests

pytestmark = pytest.mark.fashion_mnist

@pytest.fixture(scope="module")
def study(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNESWEEP_CACHE", str(tmp / "cache"))
    # an experiment of its own: what reads the study back must find it from the recorded config
    config = StudyConfig.from_dict(tiny_study(tmp, "tiny", tracking={"experiment": "tiny-studies"}))
    yield config, run_study(config, progress=False)
    mp.undo()


def test_every_cell_appears_once_in_mlflow(study):
    config, result = study
    runs = tracker_of(config).trial_runs()
    cells = {cell.id: cell for cell in study_cells(config)}
    assert len(cells) == 16 and len(runs) == 16
    assert sorted(r.info.run_name for r in runs.values()) == sorted(cells)
    for run in runs.values():
        assert run.info.status == "FINISHED"
        cell = cells[run.info.run_name]
        assert run.data.params["criterion"] == cell.criterion and run.data.params["seed"] == str(cell.seed)
        assert 0 <= run.data.metrics["test_accuracy"] <= 1 and run.data.tags["scores"] == "shared"
        # by default the calibration split scores the last recovery stage only
        assert "bn_recalibrated_accuracy" in run.data.metrics and "pruned_accuracy" not in run.data.metrics
    assert result.counts == {"cells": 16, "logged": 16, "finished": 16, "failed": 0, "ran": 16}


def test_scores_are_computed_once_per_checkpoint_criterion_and_seed(study):
    config, result = study
    computed = read_computations(Path(config.run_dir) / SCORES_FOLDER)
    assert sorted(line["key"] for line in computed) == sorted(k.text for k in score_keys(config))
    assert len(computed) == 2 * 2 * 2 and {line["status"] for line in computed} == {"FINISHED"}
    assert result.scores["keys_computed"] == 8
    # every cell read its key's seconds: each key's cost counted by its 2 targets
    assert result.scores["unshared_seconds"] == pytest.approx(2 * result.scores["shared_seconds"])


def test_parent_run_holds_config_commit_tables_and_plots(study):
    config, result = study
    tracker = tracker_of(config)
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.data.tags["prunesweep.git_commit"] and parent.data.params["significance.reference"] == "random"
    assert parent.data.metrics["baseline_tiny0.test_accuracy"] >= 0
    artifacts = {a.path for a in tracker.client.list_artifacts(result.parent_run_id, "study")}
    assert {"study/cells.csv", "study/cells.md", "study/summary.md", "study/summary.json",
            "study/accuracy_vs_macs.png"} <= artifacts
    config_text = Path(tracker.client.download_artifacts(result.parent_run_id, "config/study.yaml")).read_text()
    assert StudyConfig.from_dict(__import__("yaml").safe_load(config_text)) == config
    # per (recipe, ratios, criterion, target): the 2 checkpoints x 2 seeds; l1 paired with random
    assert {row["n"] for row in result.tables.summary} == {4}
    (paired,) = result.tables.paired
    assert paired["criterion"] == "l1" and paired["pairs"] == 8 and paired["test"] == "wilcoxon"
    assert result.tables.significance["accuracy_split"] == "test"


def test_report_reads_the_study_back_from_mlflow(study, capsys):
    config, result = study
    assert cli.main(["compare", "--report", config.run_dir, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"] == json.loads(json.dumps(result.tables.summary))
    assert data["counts"]["finished"] == 16
    metrics = study_parent_metrics(config.run_dir)
    assert metrics == tracker_of(config).client.get_run(result.parent_run_id).data.metrics
    assert metrics["baseline_tiny1.test_accuracy"] >= 0
    phases = study_phase_times(config.run_dir)  # the score phase, then the cells, within the study's wall time
    assert phases["cells_ended"] == 16 and phases["before_cells"] >= 0 and phases["cells"] > 0
    assert phases["before_cells"] + phases["cells"] <= metrics["wall_seconds"]


def test_the_report_of_a_moved_copy_reads_the_copy_and_writes_nothing(study, tmp_path, capsys):
    config, result = study
    moved = Path(shutil.copytree(config.run_dir, tmp_path / "copy")).rename(tmp_path / "moved")
    database = Path(config.run_dir) / "mlflow.db"
    away = database.rename(database.with_name("mlflow.db.away"))  # reading the original's would fail
    try:
        assert cli.main(["compare", "--report", str(moved), "--json"]) == 0
    finally:
        away.rename(database)
    data = json.loads(capsys.readouterr().out)
    assert data["run_dir"] == str(moved) and data["tracking_uri"] == f"sqlite:///{moved / 'mlflow.db'}"
    assert data["summary"] == json.loads(json.dumps(result.tables.summary))
    (moved / "mlflow.db").write_bytes(b"")  # an empty database stays empty: no tables created in it
    before = file_digests(moved)
    assert_refused(capsys, ["compare", "--report", moved], moved / "mlflow.db", "is empty (0 bytes)")
    assert file_digests(moved) == before


def test_a_failing_criterion_fails_its_cells_and_the_rest_finish(ray_session, tmp_path, monkeypatch):
    """``crashing`` (a criterion registered from the tests) raises when it scores."""
    register_crashing_criterion()
    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    raw = tiny_study(tmp_path, "failing", criteria=["random", "crashing"], flops_reductions=[0.5], seeds=[0],
                     execution={"score_every_stage": True})
    raw["checkpoints"] = raw["checkpoints"][:1]
    config = StudyConfig.from_dict(raw)
    result = run_study(config, progress=False)
    runs = tracker_of(config).trial_runs().values()
    status = {r.data.params["criterion"]: r.info.status for r in runs}
    assert status == {"random": "FINISHED", "crashing": "FAILED"}
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "planted crash in scoring" in failed.data.tags["prunesweep.error"]
    assert result.counts["failed"] == 1 and result.counts["finished"] == 1
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert {"pruned_accuracy", "bn_recalibrated_accuracy"} <= set(finished.data.metrics)


def test_flag_compare_is_a_one_checkpoint_uniform_study(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    (weights,) = tiny_weights(tmp_path, seeds=(0,))
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main(["compare", "--model", weights["model"], "--weights", weights["weights"],
                         "--model-kwargs", '{"width": 8}', "--criteria", "l1", "fpgm", "--flops-reductions", "0.4",
                         "--seeds", "3", "--bn-batches", "1", "--calibration-images", "32", "--batch-size", "32",
                         "--test-subset", "64", "--run-dir", str(tmp_path / "cmp"), "--name", "cmp", "--json", "--quiet"])
    assert code == 0
    data = json.loads(buffer.getvalue())
    rows = {(r["criterion"], r["flops_reduction"]): r for r in data["summary"]}
    assert set(rows) == {("l1", 0.4), ("fpgm", 0.4)}
    for row in rows.values():
        assert row["n"] == 1 and row["failed"] == 0 and row["ci_low"] is None
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0
    config = StudyConfig.from_dict(__import__("yaml").safe_load((tmp_path / "cmp" / "study.yaml").read_text()))
    assert [r.label for r in config.ratios] == ["uniform"] and list(config.recipes) == ["default"]
    assert config.recipes["default"].bn_batches == 1 and config.significance.reference == "l1"
    runs = tracker_of(config).trial_runs()
    assert sorted((r.data.params["criterion"], r.data.params["seed"], r.info.status) for r in runs.values()) == [
        ("fpgm", "3", "FINISHED"), ("l1", "3", "FINISHED")]
    for run in runs.values():
        assert {"accuracy", "test_accuracy", "bn_accuracy", "macs", "bn_recalibrated_accuracy"} <= set(run.data.metrics)
        assert "reconstructed_accuracy" not in run.data.metrics  # the last stage only


def _ended_cells(run_dir: Path) -> dict[str, str]:
    """Tune's trial folder -> its cell's run name, for every trial that reported."""
    return {p.parent.name: json.loads((p.parent / "params.json").read_text())[META_KEY]
            for p in (run_dir / "tune").glob("*/result.json") if p.read_text().strip()}


def _saved_cells(run_dir: Path) -> dict[Path, str]:
    """The cells' saved metrics files -> their text."""
    return {p: p.read_text() for p in (run_dir / "cells").rglob("*.json")}


def test_resume_after_a_kill_repeats_nothing(ray_session, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    repo = Path(__file__).resolve().parents[2]
    raw = tiny_study(tmp_path, "resume", seeds=[0, 1, 2, 3])  # 16 cells of a second or so, one at a time:
    raw["checkpoints"] = raw["checkpoints"][:1]          # at the kill some ended, one running, the rest waiting
    raw["execution"] = {"concurrency": 1}
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "resume"
    env = {**os.environ, "PRUNESWEEP_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(repo / "tests"), os.environ.get("PYTHONPATH", "")])}
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "compare", "--config", str(path),
                               "--address", address, "--quiet"], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        wait_while_running(driver, lambda: _ended_cells(run_dir), deadline, "a cell did")
        recorded = wait_for(lambda: snapshot_with_an_ended_trial(run_dir), deadline, "a snapshot")
        wait_for(lambda: (snapshot_with_an_ended_trial(run_dir) or 0) > recorded, deadline, "the next snapshot")
        while True:
            driver.send_signal(signal.SIGSTOP)  # frozen, the driver writes neither results nor snapshots
            _, snapshotted = terminated_in_snapshot(run_dir)
            if snapshotted <= _ended_cells(run_dir).keys() or time.monotonic() > deadline:
                break
            # stopped between Tune's snapshot naming a trial TERMINATED and its JSON logger writing
            # that trial's result: kill at a moment when the two agree
            driver.send_signal(signal.SIGCONT)
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before_cells, before_saved = _ended_cells(run_dir), _saved_cells(run_dir)
    assert snapshotted and snapshotted <= before_cells.keys() and len(before_saved) < 16, "interrupted mid-way"
    computed_before = read_computations(run_dir / SCORES_FOLDER)
    config = StudyConfig.from_dict(yaml.safe_load((run_dir / "study.yaml").read_text()))
    before_runs = tracker_of(config).trial_runs()
    # a cell that finds its metrics saved reports them without running: mark a waiting one's
    marked = next(c for c in reversed(study_cells(config)) if c.result_path(run_dir / "cells") not in before_saved)
    planted = {**json.loads(next(iter(before_saved.values()))), "test_accuracy": 0.123456}
    marked.result_path(run_dir / "cells").parent.mkdir(parents=True, exist_ok=True)
    marked.result_path(run_dir / "cells").write_text(json.dumps(planted))
    before_saved[marked.result_path(run_dir / "cells")] = json.dumps(planted)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            assert cli.main(["compare", "--resume", str(run_dir), "--json", "--quiet"]) == 0
    data = json.loads(buffer.getvalue())
    assert data["counts"]["finished"] == 16 and data["counts"]["logged"] == 16
    # Tune: every cell reported, the trials its snapshot recorded once (a cell that ended after the
    # last snapshot is one Tune starts again: it reports the metrics the cell saved, unrecomputed)
    ids = sorted(c.id for c in study_cells(config))
    assert sorted(set(_ended_cells(run_dir).values())) == ids
    assert all(len((run_dir / "tune" / name / "result.json").read_text().splitlines()) == 1 for name in snapshotted)
    # each cell computed once: the metrics saved before the kill are untouched, and MLflow holds
    # exactly what each cell saved
    saved = _saved_cells(run_dir)
    assert len(saved) == 16 and all(saved[path] == text for path, text in before_saved.items())
    runs = tracker_of(config).trial_runs()
    assert sorted(r.info.run_name for r in runs.values()) == ids
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    by_name = {r.info.run_name: r for r in runs.values()}
    for cell in study_cells(config):
        metrics = json.loads(cell.result_path(run_dir / "cells").read_text())
        logged = by_name[cell.id].data.metrics
        assert {"test_accuracy", "prune_seconds"} <= logged.keys()
        assert all(logged[k] == pytest.approx(v) for k, v in metrics.items() if k in logged)
    assert by_name[marked.id].data.metrics["test_accuracy"] == pytest.approx(0.123456)
    # a run the kill left open is the one its resumed trial completes; an ended one is untouched
    for trial_id, run in before_runs.items():
        assert runs[trial_id].info.run_id == run.info.run_id
        if run.info.status == "FINISHED":
            assert runs[trial_id].data.metrics == run.data.metrics
    # the scores were computed before the kill and read back, not recomputed
    assert len(computed_before) == 2 * 4 and read_computations(run_dir / SCORES_FOLDER) == computed_before


@pytest.mark.parametrize("ended, unfinished", [(16, False), (15, True)])
def test_report_against_a_dead_server_says_to_start_it_and_resume_only_an_unfinished_study(
        monkeypatch, capsys, tmp_path, ended, unfinished):
    from cluster_helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    raw = tiny_study(tmp_path, "dead", tracking={"uri": uri})
    config = StudyConfig.from_dict(raw)
    run_dir = Path(config.run_dir)
    (run_dir / "tune").mkdir(parents=True)
    (run_dir / "study.yaml").write_text(__import__("yaml").safe_dump(raw))
    states = [[json.dumps({"status": "TERMINATED"}), "{}"]] * ended  # Tune's snapshot of the cells it ended
    (run_dir / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": states}))
    assert len(study_cells(config)) == 16
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert cli.main(["compare", "--report", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: tracking.uri: the MLflow server {uri} does not answer (Connection refused); "
                               "start it"), lines[0]
    assert (f"; the study is unfinished: `prunesweep compare --resume {run_dir}` continues it" in lines[0]) == unfinished
    assert "Tune keeps" not in lines[0]
