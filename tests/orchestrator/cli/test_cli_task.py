"""`--task` and `--task-kwargs`: a task of one's own (``user_tasks:bands``, an import path registered
nowhere) through train -> prune -> eval, its metrics reported by name and recorded in every
checkpoint; a `--task` a checkpoint contradicts, and bad task options, refused in one line; and
classification's numbers as they were before tasks existed."""
from __future__ import annotations

import pytest

from cli_helpers import assert_bad_input, main_json, run_json
from pruning.structure import load_checkpoint

TASK = "user_tasks:bands"
RECORD = {"name": TASK, "kwargs": {"bands": 4}}
MODEL = ["--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 4}']
RECOVERY = ["--calibration-images", "32", "--batch-size", "32", "--bn-batches", "1", "--finetune-epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("bands") / "base.pt"
    data = main_json("train", *MODEL, "--task", TASK, "--task-kwargs", '{"bands": 4}', "--epochs", "1",
                     "--calibration-size", "32", "--batch-size", "32", "--lr", "0.05", "--out", out)
    return {"data": data, "out": out}


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("bands-pruned") / "pruned.pt"
    data = main_json("prune", "--checkpoint", trained["out"], "--criterion", "l1", "--flops-reduction", "0.5",
                     *RECOVERY, "--out", out)
    return {"data": data, "out": out}


def test_train_reports_and_records_the_task(trained):
    data = trained["data"]
    assert data["task"] == RECORD and data["dataset"] == "bands"
    assert data["test_mse"] >= 0 and data["test_mae"] >= 0 and "test_accuracy" not in data
    assert {"epoch", "loss", "mse", "mae"} <= set(data["history"][0])
    _, spec = load_checkpoint(trained["out"])
    assert spec.meta["task"] == RECORD and spec.meta["test_mse"] == data["test_mse"]
    assert spec.num_classes == 4


def test_prune_scores_stages_by_the_primary_metric(pruned):
    data = pruned["data"]
    assert data["task"] == RECORD
    for side in ("base", "pruned"):
        assert {"mse", "mae"} <= set(data[side]) and "accuracy" not in data[side]
    assert list(data["pruning"]["mse_stages"]) == ["pruned", "reconstructed", "bn_recalibrated", "finetuned"]
    assert data["pruned"]["mse"] == data["pruning"]["mse_stages"]["finetuned"]
    assert data["pruned"]["macs"] < data["base"]["macs"]
    _, spec = load_checkpoint(pruned["out"])
    assert spec.meta["task"] == RECORD  # kept by every checkpoint written from a run


def test_eval_of_the_pruned_checkpoint_uses_its_task(pruned, capsys):
    evaluated = run_json(capsys, "eval", "--checkpoint", pruned["out"])
    assert evaluated["task"] == RECORD and "accuracy" not in evaluated
    assert evaluated["mse"] == pytest.approx(pruned["data"]["pruned"]["mse"])
    assert evaluated["mae"] == pytest.approx(pruned["data"]["pruned"]["mae"])
    # the recorded task, given again, is no conflict
    again = run_json(capsys, "eval", "--checkpoint", pruned["out"], "--task", TASK, "--task-kwargs", '{"bands": 4}')
    assert again["mse"] == evaluated["mse"]


@pytest.mark.parametrize("task", [["--task", "classification"], ["--task", TASK, "--task-kwargs", '{"bands": 2}']])
def test_a_task_the_checkpoint_contradicts_is_refused(trained, task, capsys, tmp_path):
    out = tmp_path / "pruned.pt"
    line = assert_bad_input(capsys, ["prune", "--checkpoint", trained["out"], *task, "--flops-reduction", "0.5",
                                     "--out", out], "--task", TASK, str(trained["out"]), "drop --task", no_files=[out])
    assert "differs from the task" in line


def test_stats_per_class_needs_class_labels(trained, capsys, tmp_path):
    out = tmp_path / "act.pt"
    assert_bad_input(capsys, ["stats", "--checkpoint", trained["out"], "--per-class", "--out", out],
                     "--per-class", "class label", TASK, no_files=[out])


@pytest.mark.parametrize("command", ["eval", "stats", "prune", "train"])
@pytest.mark.parametrize("options, needles", [
    (["--task", TASK, "--task-kwargs", "{bands: 4"], ["--task-kwargs is not valid JSON", "{bands: 4"]),
    (["--task", TASK, "--task-kwargs", "[4]"], ["--task-kwargs must be a JSON object", "[4]"]),
    (["--task", "segmentation", "--task-kwargs", '{"colour": 1}'], ["--task-kwargs", "colour", "canvas_size"]),
    (["--task", TASK, "--task-kwargs", '{"bands": 3}'], [TASK, "bands must divide 8"]),
    (["--task", "detection"], ["unknown task 'detection'", "classification", "segmentation"]),
    (["--task", "no_module_xyz:build"], ["no_module_xyz"]),
    (["--task-kwargs", '{"bands": 4}'], ["--task-kwargs goes with --task"]),
])
def test_bad_task_options_are_refused_in_one_line(command, options, needles, capsys, tmp_path):
    out = tmp_path / "out.pt"
    extra = {"eval": [], "stats": ["--out", out], "prune": ["--flops-reduction", "0.5", "--out", out],
             "train": ["--out", out]}[command]
    assert_bad_input(capsys, [command, *MODEL, *options, *extra], *needles, no_files=[out])


@pytest.mark.parametrize("options, needles", [
    (["--task", TASK, "--task-kwargs", "{bands: 4"], ["--task-kwargs is not valid JSON"]),
    (["--task-kwargs", '{"bands": 4}'], ["--task-kwargs goes with --task"]),
])
def test_compare_refuses_bad_task_options(options, needles, capsys):
    assert_bad_input(capsys, ["compare", *MODEL, "--criteria", "l1", "--flops-reductions", "0.5", *options], *needles)


@pytest.mark.fashion_mnist
def test_classification_prune_numbers_are_unchanged(tmp_path):
    """One prune of a briefly trained tiny CNN, its numbers as the command reported them before
    tasks existed (accuracies on 128 test images are multiples of 1/128)."""
    base = tmp_path / "tiny.pt"
    trained = main_json("train", "--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 6}', "--epochs", "1",
                        "--train-subset", "512", "--calibration-size", "64", "--test-subset", "128", "--batch-size",
                        "32", "--lr", "0.05", "--out", base)
    assert trained["test_accuracy"] == 0.25 and trained["task"] == {"name": "classification", "kwargs": {}}
    data = main_json("prune", "--checkpoint", base, "--criterion", "l1", "--flops-reduction", "0.5",
                     "--calibration-images", "64", "--batch-size", "64", "--bn-batches", "1", "--finetune-epochs", "1",
                     "--finetune-subset", "128")
    assert data["task"] == {"name": "classification", "kwargs": {}}
    assert (data["base"]["accuracy"], data["pruned"]["accuracy"]) == (0.25, 0.171875)
    assert (data["base"]["macs"], data["pruned"]["macs"], data["base"]["params"], data["pruned"]["params"]) == (
        169464, 84752, 868, 438)
    assert data["pruning"]["accuracy_stages"] == {"pruned": 0.125, "reconstructed": 0.25, "bn_recalibrated": 0.1953125,
                                                  "finetuned": 0.171875}
    assert data["pruning"]["macs_reduction"] == 0.4998819808336874
