"""Sweeps end to end on a real (tiny) baseline: Ray Tune + Optuna trials, MLflow tracking, the
Pareto front and failure handling (resuming after the driver was killed: test_sweep_resume.py).

Every sweep prunes the session's ResNet-20 (``trained_resnet20``: real Fashion-MNIST, skipped when
the dataset is not installed), runs on the session's Ray runtime (``ray_session``, 2 CPUs) and
writes to its own temporary SQLite store.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.report import format_value
from orchestrator.experiment import TAG_ERROR, TAG_PARETO, TAG_TRIAL_ID, TAG_TRIAL_NUMBER, Tracker, TrialRecord
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta
from orchestrator.sweeps import DefineByRun, SweepConfig, pareto_front, register_context, run_sweep
from pruning.structure import load_checkpoint, measure_cost
from crashing import register_crashing_space
from sweep_helpers import main_json, sweep_config, tracker_of

# --- module fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(trained_resnet20) -> Path:
    return trained_resnet20["out"]


@pytest.fixture(scope="module")
def sweep_run(ray_session, baseline, tmp_path_factory):
    """5 trials, 2 at a time, concentration space with l1/entropy; trial 1 crashes on purpose
    (the ``crashing`` space of ``crashing.py``).

    Plans removing less than 35% of the MACs are infeasible (flops_bounds), so some trials are
    reported infeasible without training (seed 0 samples such targets; asserted below). Every
    trial is sampled (no warm starts: test_two_stage.py checks those).
    """
    register_crashing_space()
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    space = {"name": "crashing", "criteria": ["l1", "entropy"], "flops_reduction": [0.1, 0.8],
             "finetune_epochs": [0, 1], "flops_bounds": [0.35, 0.95], "crash_trials": [1]}
    config = SweepConfig.from_dict(sweep_config(baseline, run_dir, name="tiny", space=space, trials=5, seed=0,
                                                warm_start=False))
    started = time.perf_counter()
    result = run_sweep(config, progress=False)
    return {"config": config, "result": result, "seconds": time.perf_counter() - started}


# --- one sweep ---------------------------------------------------------------------------------


@pytest.mark.fashion_mnist
def test_parent_run_holds_config_commit_and_baseline(sweep_run):
    config, result = sweep_run["config"], sweep_run["result"]
    tracker = tracker_of(config)
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prunesweep.sweep"] == "tiny"
    assert parent.data.tags["prunesweep.run_dir"] == config.run_dir
    commit = parent.data.tags["prunesweep.git_commit"]
    assert commit == "unknown" or len(commit) == 40
    params = parent.data.params
    assert params["sweep.trials"] == "5" and params["space.name"] == "crashing"
    assert params["sweep.objectives.macs"] == "min" and params["recipe.bn_batches"] == "2"
    assert params["recipe.reconstruct"] == "True"  # the default recipe reconstructs
    assert params["space.alpha"] == "[0.0, 1.0]"  # the space's defaults are part of the resolved config
    for key in ("baseline_accuracy", "baseline_test_accuracy", "baseline_macs", "baseline_params"):
        assert key in parent.data.metrics
    assert parent.data.metrics["baseline_macs"] == result.baseline["macs"]
    text = tracker.client.download_artifacts(result.parent_run_id, "config/sweep.yaml")
    assert SweepConfig.from_dict(yaml.safe_load(Path(text).read_text())) == config
    assert (Path(config.run_dir) / "sweep.yaml").is_file()


@pytest.mark.fashion_mnist
def test_the_phases_wall_times_add_up_to_the_run_and_reach_the_parent_run(sweep_run):
    config, result = sweep_run["config"], sweep_run["result"]
    phases = result.phases
    assert set(phases) == {"baseline", "extras", "screening", "front"}  # one stage: no refinement
    assert all(seconds > 0 for seconds in phases.values())
    # the phases are disjoint parts of the run: together at most its wall time, and most of it
    assert 0.5 * sweep_run["seconds"] < sum(phases.values()) <= sweep_run["seconds"]
    assert result.to_dict()["phases"] == phases
    metrics = tracker_of(config).client.get_run(result.parent_run_id).data.metrics
    assert {name: metrics[f"phase.{name}_seconds"] for name in phases} == pytest.approx(phases)


@pytest.mark.fashion_mnist
def test_every_trial_is_a_nested_run_with_params_and_metrics(sweep_run):
    config, result = sweep_run["config"], sweep_run["result"]
    runs = tracker_of(config).trial_runs()
    assert len(runs) == 5 == len(result.trials)
    numbers = sorted(int(r.data.tags[TAG_TRIAL_NUMBER]) for r in runs.values())
    assert numbers == [0, 1, 2, 3, 4]
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(finished) == 4
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert {"criterion", "flops_reduction", "alpha", "temperature", "finetune_lr", "finetune_epochs",
                "weight_decay"} <= set(run.data.params)
        assert not any(k.startswith("_") for k in run.data.params)
    for run in finished:
        metrics = run.data.metrics
        assert {"accuracy", "bn_accuracy", "macs", "params", "feasible", "macs_reduction"} <= set(metrics)
        assert run.data.tags["criterion"] == run.data.params["criterion"]
        if metrics["feasible"]:
            # the recipe ran: reconstruction, BN recalibration, and fine-tuning where it was sampled
            stages = ["pruned", "reconstructed", "bn_recalibrated"]
            if run.data.params["finetune_epochs"] == "1":
                stages.append("finetuned")
            assert {f"{stage}_accuracy" for stage in stages} <= set(metrics)
            assert {f"{stage}_seconds" for stage in stages[1:]} <= set(metrics)
            assert metrics["accuracy"] == metrics[f"{stages[-1]}_accuracy"]
            assert metrics["bn_accuracy"] == metrics["bn_recalibrated_accuracy"]
            assert ("finetuned_accuracy" in metrics) == (run.data.params["finetune_epochs"] == "1")
            assert 0.35 - 0.011 <= metrics["macs_reduction"] <= 0.95
            assert metrics["macs"] < result.baseline["macs"]
            assert run.data.tags["prunesweep.checkpoint"].endswith("checkpoint_000000")
        else:  # worst values, no training, no checkpoint
            assert metrics["accuracy"] == 0.0 and metrics["macs"] == result.baseline["macs"]
            assert "flops_bounds" in run.data.tags["infeasible_reason"]
            assert "prunesweep.checkpoint" not in run.data.tags
    counts = result.counts()
    assert counts["failed"] == 1 and counts["finished"] == 4
    # seed 0 samples targets on both sides of the 35% bound: both kinds of trial are exercised
    assert 1 <= counts["feasible"] <= 3


@pytest.mark.fashion_mnist
def test_a_crashing_trial_is_failed_with_its_error_and_the_sweep_goes_on(sweep_run):
    config, result = sweep_run["config"], sweep_run["result"]
    tracker = tracker_of(config)
    failed = [r for r in tracker.trial_runs().values() if r.info.status == "FAILED"]
    assert len(failed) == 1
    run = failed[0]
    assert run.data.tags[TAG_TRIAL_NUMBER] == "1"
    assert run.data.tags[TAG_ERROR].endswith("PlantedCrash: planted crash in trial 1"), run.data.tags[TAG_ERROR]
    error = Path(tracker.client.download_artifacts(run.info.run_id, "error.txt")).read_text()
    assert 'File "' in error and "in sweep_trial" in error and "PlantedCrash" in error
    assert "\x1b[" not in error
    assert not run.data.metrics
    assert result.complete  # the other trials ran to the end


@pytest.mark.fashion_mnist
def test_front_table_plot_test_accuracy_and_checkpoints(sweep_run):
    config, result = sweep_run["config"], sweep_run["result"]
    tracker = tracker_of(config)
    records = tracker.read_trials()
    finished = [r for r in records if r.status == "FINISHED"]
    feasible = [r for r in finished if r.metrics["feasible"] == 1.0]
    # the front is computed over feasible finished trials only
    points = [dict(r.metrics) for r in feasible]
    expected = {feasible[i].trial_id for i in pareto_front(points, {"accuracy": "max", "macs": "min"})}
    assert {row["trial_id"] for row in result.front} == expected
    assert 1 <= len(result.front) <= len(feasible)
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.data.metrics["pareto_size"] == len(result.front)
    assert parent.data.metrics["hypervolume"] > 0
    artifacts = {a.path for a in tracker.client.list_artifacts(result.parent_run_id, "pareto")}
    assert {"pareto/front.md", "pareto/front.json", "pareto/front.png", "pareto/checkpoints"} <= artifacts
    table = Path(tracker.client.download_artifacts(result.parent_run_id, "pareto/front.md")).read_text()
    png = Path(tracker.client.download_artifacts(result.parent_run_id, "pareto/front.png")).read_bytes()
    assert png.startswith(b"\x89PNG")
    checkpoints = {a.path for a in tracker.client.list_artifacts(result.parent_run_id, "pareto/checkpoints")}
    assert checkpoints == {f"pareto/checkpoints/{row['trial']}.pt" for row in result.front}
    for row in result.front:
        # test accuracy: evaluated for the front only, logged on the parent, the trial and in the table
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert parent.data.metrics[f"pareto.{row['trial']}.test_accuracy"] == row["test_accuracy"]
        assert row["trial"] in table and format_value(row["test_accuracy"]) in table
        run = tracker.client.get_run(row["run_id"])
        assert run.data.tags[TAG_PARETO] == "true" and run.data.metrics["test_accuracy"] == row["test_accuracy"]
        # the logged checkpoint is the pruned model: it loads, with the MACs the trial reported
        path = tracker.client.download_artifacts(result.parent_run_id, f"pareto/checkpoints/{row['trial']}.pt")
        model, spec = load_checkpoint(path)
        assert measure_cost(model, spec.input_shape).macs == row["macs"]
        assert spec.meta["pruning"]["criterion"] == row["criterion"]
        # the recipe the trial ran: the config's, with the sampled fine-tuning values
        recipe = spec.meta["pruning"]["recipe"]
        assert recipe["reconstruct"] is True and recipe["bn_batches"] == 2 and recipe["finetune_subset"] == 64
        assert recipe["finetune_epochs"] == int(row["params"]["finetune_epochs"])
        assert recipe["finetune_lr"] == pytest.approx(float(row["params"]["finetune_lr"]))
    off_front = [r for r in finished if r.trial_id not in {row["trial_id"] for row in result.front}]
    for record in off_front:
        assert record.tags[TAG_PARETO] == "false" and "test_accuracy" not in record.metrics


@pytest.mark.fashion_mnist
def test_pareto_cli_reads_the_front_back_from_mlflow(sweep_run, capsys):
    config, result = sweep_run["config"], sweep_run["result"]
    data = main_json(["pareto", config.run_dir])
    assert [row["trial_id"] for row in data["front"]] == [row["trial_id"] for row in result.front]
    assert [row["test_accuracy"] for row in data["front"]] == [row["test_accuracy"] for row in result.front]
    assert data["counts"] == result.counts()
    assert data["objectives"] == {"accuracy": "max", "macs": "min"}
    assert data["mlflow_ui"] == f"mlflow ui --backend-store-uri {config.tracking_uri}"
    assert cli.main(["pareto", config.run_dir, "--tracking-uri", config.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "Pareto front over accuracy (max), macs (min)" in out and "test_accuracy" in out
    assert f"mlflow ui --backend-store-uri {config.tracking_uri}" in out
    for row in result.front:
        assert row["trial"] in out
    assert cli.main(["pareto", str(Path(config.run_dir).parent / "elsewhere")]) == 2
    assert "no MLflow database" in capsys.readouterr().err


@pytest.mark.fashion_mnist
def test_a_finished_sweep_is_not_run_twice(sweep_run, tmp_path, capsys):
    config = sweep_run["config"]
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert cli.main(["sweep", "--config", str(path)]) == 2
    assert "already holds a sweep: resume it with" in capsys.readouterr().err


# --- pieces ------------------------------------------------------------------------------------


def test_define_by_run_samples_in_the_registered_context_and_pickles_small(tiny_resnet, example_input):
    import pickle

    import optuna

    from pruning.structure import PruningSpace
    from search_spaces import SpaceContext, create_search_space

    context = SpaceContext(space=PruningSpace.build(tiny_resnet, example_input))
    define = DefineByRun(create_search_space("per_layer", criteria=["l1", "fpgm"]), "key-1")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    first, second, third = study.ask(), study.ask(), study.ask()
    with pytest.raises(RuntimeError, match="no search-space context registered for key-1"):
        define(first)
    with register_context("key-1", context):
        assert define(first) == {META_KEY: TrialMeta(number=0, stage="screen")}
        assert define(second) == {META_KEY: TrialMeta(number=1, stage="screen")}
        names = set(first.params)
        assert {"criterion", "finetune_lr", "finetune_epochs", "weight_decay"} <= names
        assert {f"ratio.{g.name}" for g in context.space.groups} <= names
        assert len(pickle.dumps(define)) < 1000  # no model, statistics or space inside
        restored = pickle.loads(pickle.dumps(define))
        assert restored(third) == {META_KEY: TrialMeta(number=2, stage="screen")}  # the space survives
        assert set(third.params) == names
        plan = create_search_space("per_layer", criteria=["l1", "fpgm"]).to_plan(first.params, context)
        assert plan.criterion == first.params["criterion"]
    with pytest.raises(RuntimeError, match="no search-space context"):
        define(study.ask())  # the context was unregistered on leaving the block


def test_tracker_logs_each_trial_once_and_updates_its_status(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "prunesweep", tmp_path / "run")
    parent, created = tracker.start_parent("t", params={"a": 1, "b": [1, 2]}, texts={"config/x.yaml": "a: 1\n"})
    assert created and tracker.start_parent("t") == (parent, False)  # found again by its run_dir tag
    # a fresh start (not a resume) supersedes a parent left by a start that failed early
    stale, _ = tracker.start_parent("stale", reuse=False)
    assert stale != parent and tracker.find_parent() == stale
    assert tracker.client.get_run(parent).info.status == "FAILED"
    failed = TrialRecord("abc", "trial-000", "FAILED", params={"criterion": "l1", "ratio.layer1.conv1": 0.5},
                         tags={TAG_TRIAL_NUMBER: "0"}, error="Traceback ...\nValueError: boom\n")
    run_id = tracker.log_trial(failed)
    assert tracker.log_trial(failed) == run_id
    ok = TrialRecord("abc", "trial-000", "FINISHED", params={"criterion": "l1", "ratio.layer1.conv1": 0.5},
                     metrics={"accuracy": 0.5, "macs": 10.0, "feasible": True, "bad": float("nan")},
                     tags={TAG_TRIAL_NUMBER: "0"}, checkpoint="/x/checkpoint_000000")
    assert tracker.log_trial(ok) == run_id  # a retried trial updates its run
    runs = tracker.trial_runs()
    assert list(runs) == ["abc"]
    run = runs["abc"]
    assert run.info.status == "FINISHED" and run.data.tags[TAG_TRIAL_ID] == "abc"
    assert run.data.metrics == {"accuracy": 0.5, "macs": 10.0, "feasible": 1.0}
    assert run.data.params == {"criterion": "l1", "ratio.layer1.conv1": "0.5"}
    [record] = tracker.read_trials()
    assert record.checkpoint == "/x/checkpoint_000000" and record.number == 0
