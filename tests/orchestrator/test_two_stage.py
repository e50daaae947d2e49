"""A two-stage sweep end to end on the tiny baseline, run as `prunesweep sweep` in a subprocess
(its console output is checked too): 4 screening trials (warm starts), no fine-tuning; 2 of
them refined with one distilled fine-tuning epoch; the front built from the refined trials only."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from orchestrator.experiment import TAG_PARETO, TAG_TRIAL_NUMBER, Tracker
from orchestrator.sweeps import SweepConfig
from orchestrator.sweeps.refine import select_candidates
from orchestrator.experiment.tracking import TAG_REFINES, TAG_STAGE
from pruning.structure import PruningSpace, load_checkpoint
from search_spaces import SpaceContext
from sweep_helpers import main_json

REPO = Path(__file__).resolve().parents[2]
#: latency on PyTorch (a table builds in a second): screening predicts it, refinement measures it
OBJECTIVES = {"accuracy": "max", "macs": "min", "latency_ms": "min"}


@pytest.fixture(scope="module")
def two_stage(ray_session, trained_resnet20, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-stage")
    raw = {
        "name": "two-stage", "checkpoint": str(trained_resnet20["out"]), "run_dir": str(folder / "run"),
        "data": {"calibration_images": 64, "batch_size": 64},
        "recipe": {"bn_batches": 2, "batch_size": 64, "finetune_subset": 64},
        # 3 warm starts (l1 at 3 targets) + 1 Optuna sample; sampled fine-tuning is ignored
        "space": {"name": "uniform", "criteria": ["l1"], "flops_reduction": [0.2, 0.8],
                  "finetune_epochs": [1, 1], "flops_bounds": [0.0, 0.95]},
        # refinement 4 at a time: the 2 refined trials share the screening trials' 2 x 1 CPU
        "sweep": {"trials": 4, "concurrency": 2, "seed": 0, "refine": {"candidates": 2, "concurrency": 4},
                  "objectives": OBJECTIVES, "latency": {"runtime": "torch", "repeats": 5}},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(path), "--address", address, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = SweepConfig.from_dict(raw)
    tracker = Tracker(config.tracking_uri, "prunesweep", config.run_dir)
    assert tracker.find_parent() is not None
    runs = tracker.trial_runs()
    by_stage = {stage: [r for r in runs.values() if r.data.tags.get(TAG_STAGE) == stage] for stage in ("screen", "refine")}
    return {"config": config, "data": json.loads(done.stdout), "stderr": done.stderr, "tracker": tracker,
            "runs": runs, **by_stage}


@pytest.mark.fashion_mnist
def test_both_stages_are_nested_runs_of_one_parent_tagged_with_their_stage(two_stage):
    parent = two_stage["tracker"].parent_run_id
    assert len(two_stage["runs"]) == 6
    assert len(two_stage["screen"]) == 4 and len(two_stage["refine"]) == 2
    for run in two_stage["runs"].values():
        assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in two_stage["screen"]) == [f"trial-{i:03d}" for i in range(4)]
    parents = two_stage["tracker"].client.search_runs(
        [two_stage["tracker"].experiment_id], f"tags.`prunesweep.run_dir` = '{two_stage['config'].run_dir}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["trials_refined"] == 2


@pytest.mark.fashion_mnist
def test_the_first_screening_trials_are_the_warm_starts(two_stage, trained_resnet20):
    model, spec = load_checkpoint(trained_resnet20["out"])
    context = SpaceContext(space=PruningSpace.build(model, torch.zeros(1, *spec.input_shape)))
    starts = two_stage["config"].space.create().warm_starts(context)
    assert len(starts) == 6  # 3 targets with uniform ratios, then the same as global rankings
    by_number = {int(r.data.tags[TAG_TRIAL_NUMBER]): r for r in two_stage["screen"]}
    assert len(by_number) == 4  # the 4 trials are the first 4 warm starts
    for number, start in enumerate(starts[:4]):
        assert by_number[number].data.params == {k: str(v) for k, v in start.items()}
    # the fourth ranks every channel globally, to its target
    ranked = by_number[3]
    assert ranked.data.params["allocation"] == "global"
    assert abs(ranked.data.metrics["macs_reduction"] - starts[3]["flops_reduction"]) <= 0.01


@pytest.mark.fashion_mnist
def test_screening_does_not_fine_tune_and_refinement_does(two_stage):
    for run in two_stage["screen"]:
        metrics = run.data.metrics
        assert "finetuned_accuracy" not in metrics  # finetune_epochs 1 was sampled, and ignored
        assert metrics["accuracy"] == metrics["bn_recalibrated_accuracy"] == metrics["bn_accuracy"]
        # a screening trial scores its last stage only; the stages before it are timed, not scored
        assert "pruned_accuracy" not in metrics and "reconstructed_accuracy" not in metrics
        assert metrics["reconstructed_seconds"] > 0 and metrics["score_seconds"] > 0
        assert 0 < metrics["cpu_seconds"] and 0 < metrics["body_seconds"] <= metrics["trial_seconds"]
        assert json.loads(run.data.tags["recipe"])["finetune_epochs"] == 0  # what ran, not what was sampled
        assert TAG_PARETO not in run.data.tags
    screen_by_name = {r.info.run_name: r for r in two_stage["screen"]}
    for run in two_stage["refine"]:
        source = screen_by_name[run.data.tags[TAG_REFINES]]
        assert run.info.run_name == "refine-" + source.info.run_name.split("-")[1]
        assert run.data.params == source.data.params  # the plan is rebuilt from the same params
        assert run.data.metrics["macs"] == source.data.metrics["macs"]
        assert run.data.metrics["accuracy"] == run.data.metrics["finetuned_accuracy"]
        assert "pruned_accuracy" in run.data.metrics  # refinement scores every stage
        assert json.loads(run.data.tags["recipe"])["finetune_epochs"] == 1
        model, spec = load_checkpoint(Path(run.data.tags["prunesweep.checkpoint"]) / "pruned.pt")
        recipe = spec.meta["pruning"]["recipe"]
        assert recipe["finetune_epochs"] == 1 and recipe["distill"] == 0.5 and recipe["finetune_subset"] == 64


@pytest.mark.fashion_mnist
def test_refinement_concurrency_shares_the_screening_resources(two_stage):
    """`sweep.refine.concurrency: 4` over `sweep.concurrency: 2` gives each refined trial half a
    screening trial's CPU (what Ray assigned it, logged as trial_cpus)."""
    assert [r.data.metrics["trial_cpus"] for r in two_stage["screen"]] == [1.0] * 4
    assert [r.data.metrics["trial_cpus"] for r in two_stage["refine"]] == [0.5] * 2


def test_each_trial_logs_the_gpus_ray_gave_it_and_the_device_its_model_ran_on(two_stage):
    trials = two_stage["screen"] + two_stage["refine"]
    assert [r.data.metrics["trial_gpus"] for r in trials] == [0.0] * 6
    assert [r.data.tags["device"] for r in trials] == ["cpu"] * 6


def test_refined_trials_are_the_candidates_spread_over_the_screening_front(two_stage):
    screen = sorted(two_stage["screen"], key=lambda r: int(r.data.tags[TAG_TRIAL_NUMBER]))
    points = [{**r.data.metrics, "feasible": r.data.metrics["feasible"] >= 0.5, "params": r.data.params} for r in screen]
    # in the order the sweep recorded them: the first cost objective is the one candidates spread over
    objectives = yaml.safe_load((Path(two_stage["config"].run_dir) / "sweep.yaml").read_text())["sweep"]["objectives"]
    expected = {screen[i].info.run_name for i in select_candidates(points, objectives, 2)}
    assert {r.data.tags[TAG_REFINES] for r in two_stage["refine"]} == expected


@pytest.mark.fashion_mnist
def test_the_front_comes_from_the_refined_trials_only(two_stage):
    data, tracker = two_stage["data"], two_stage["tracker"]
    refined = {r.info.run_id: r for r in two_stage["refine"]}
    assert data["complete"] and data["counts"]["refined"] == 2 and data["counts"]["trials"] == 6
    assert data["front"] and all(row["run_id"] in refined and row["trial"].startswith("refine-") for row in data["front"])
    for row in data["front"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert refined[row["run_id"]].data.tags[TAG_PARETO] == "true"
    checkpoints = {a.path for a in tracker.client.list_artifacts(tracker.parent_run_id, "pareto/checkpoints")}
    assert checkpoints == {f"pareto/checkpoints/{row['trial']}.pt" for row in data["front"]}
    # `prunesweep pareto` reads the same two-stage front back
    read_back = main_json(["pareto", two_stage["config"].run_dir])
    assert [r["trial_id"] for r in read_back["front"]] == [r["trial_id"] for r in data["front"]]


@pytest.mark.fashion_mnist
def test_screening_predicts_latency_and_refinement_measures_it_on_the_target(two_stage):
    for run in two_stage["screen"]:
        metrics = run.data.metrics
        assert metrics["latency_ms"] == metrics["latency_predicted_ms"] > 0
        assert "latency_measured_ms" not in metrics and "latency_error" not in metrics
    for run in two_stage["refine"]:
        metrics = run.data.metrics
        assert metrics["latency_ms"] == metrics["latency_measured_ms"] > 0
        assert metrics["latency_error"] == pytest.approx(metrics["latency_predicted_ms"] / metrics["latency_measured_ms"] - 1)
    data = two_stage["data"]
    assert data["latency"] == {"runtime": "torch", "device": "cpu", "batch": 1, "threads": 1, "warmup": 3,
                               "repeats": 5, "table_points": 8}
    assert all(row["latency_measured_ms"] > 0 for row in data["front"])
    parent = two_stage["tracker"].client.get_run(two_stage["tracker"].parent_run_id)
    assert parent.data.params["sweep.latency.runtime"] == "torch" and parent.data.params["sweep.latency.repeats"] == "5"
    errors = [abs(row["latency_error"]) for row in data["front"]]
    assert parent.data.metrics["front_latency_error_median"] == pytest.approx(statistics.median(errors))
    assert parent.data.metrics["phase.latency_table_seconds"] > 0


@pytest.mark.fashion_mnist
def test_the_console_shows_one_line_per_trial_and_no_tune_table(two_stage):
    err = two_stage["stderr"]
    for table in ("Trial status", "Trial name", "== Status ==", "Configuration for experiment"):
        assert table not in err, err[-3000:]
    screen = [line for line in err.splitlines() if line.startswith("[screen] trial-")]
    refine = [line for line in err.splitlines() if line.startswith("[refine] refine-")]
    assert len(screen) == 4 and len(refine) == 2, err[-3000:]
    assert screen[-1].endswith("(4/4 done, 0 failed)") and refine[-1].endswith("(2/2 done, 0 failed)")
    assert "accuracy" in refine[0] and "macs" in refine[0]


@pytest.mark.fashion_mnist
def test_the_front_models_are_mlflow_onnx_models_and_pareto_exports_them_checked(two_stage, tmp_path):
    """Each front trial's run holds an ONNX MLflow model that pyfunc loads (no unpickling) and that
    predicts the checkpoint's logits; `pareto --export DIR` writes the same front as checked files."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from orchestrator.experiment.tracking import ONNX_MODEL_NAME
    from orchestrator.sweeps.trials import MODEL_FILE
    from pruning.export import INPUT_NAME, OUTPUT_NAME, onnx_session

    data, tracker = two_stage["data"], two_stage["tracker"]
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    expected = {}
    for row in data["front"]:
        model, _ = load_checkpoint(Path(row["checkpoint"]) / MODEL_FILE)
        with torch.no_grad():
            expected[row["trial"]] = model(x).numpy()
        with _use_tracking_uri(tracker.uri):
            logged = mlflow.pyfunc.load_model(f"runs:/{row['run_id']}/{ONNX_MODEL_NAME}")
        assert logged.metadata.signature is not None and logged.metadata.get_input_schema() is not None
        predicted = logged.predict(x.numpy())[OUTPUT_NAME]
        np.testing.assert_allclose(predicted, expected[row["trial"]], atol=1e-4, rtol=0)
        with _use_tracking_uri(tracker.uri):
            requirements = Path(mlflow.pyfunc.get_model_dependencies(f"runs:/{row['run_id']}/{ONNX_MODEL_NAME}"))
        pinned = dict(line.split("==") for line in requirements.read_text().split())
        assert set(pinned) == {"mlflow", "onnx", "onnxruntime", "numpy"} and pinned["numpy"] == np.__version__
    front_runs = {row["run_id"] for row in data["front"]}
    for run in two_stage["runs"].values():
        assert tracker.has_logged_model(run.info.run_id, ONNX_MODEL_NAME) == (run.info.run_id in front_runs)

    out = tmp_path / "onnx"
    exported = main_json(["pareto", two_stage["config"].run_dir, "--export", out])["export"]
    assert [e["trial"] for e in exported] == [row["trial"] for row in data["front"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{row['trial']}.onnx" for row in data["front"])
    for entry in exported:
        assert entry["check"]["passed"] and entry["file"] == str(out / f"{entry['trial']}.onnx")
        got = onnx_session(entry["file"]).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        np.testing.assert_allclose(got, expected[entry["trial"]], atol=1e-4, rtol=0)
