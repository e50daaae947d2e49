"""`prunesweep prune` on the session's trained ResNet-20 (real Fashion-MNIST): targets, ratio
sources, the recovery recipe and what it writes."""
from __future__ import annotations

import json
import re

import pytest
import torch

from cli_helpers import assert_bad_input, main_json, run_cli, run_json
from pruning.recovery import RecoveryRecipe
from pruning.structure import load_checkpoint

pytestmark = pytest.mark.fashion_mnist
INNER_LAYER = re.compile(r"layer\d\.\d+\.conv1$")
#: small calibration and batches, so the module stays fast
QUICK = ["--calibration-images", "128", "--batch-size", "64"]


@pytest.fixture(scope="module")
def l1_run(trained_resnet20, tmp_path_factory):
    """`prune --criterion l1 --flops-reduction 0.5`: the default recipe (reconstruction on) with
    two BN batches and a fine-tune epoch, checkpoint and schedule out."""
    folder = tmp_path_factory.mktemp("l1")
    out, schedule = folder / "pruned.pt", folder / "schedule.json"
    data = main_json("prune", "--checkpoint", trained_resnet20["out"], "--criterion", "l1", "--flops-reduction", "0.5",
                     "--finetune-epochs", "1", "--finetune-subset", "256", "--bn-batches", "2", *QUICK,
                     "--out", out, "--schedule-out", schedule)
    return {"data": data, "out": out, "schedule": schedule, "folder": folder}


def test_prune_l1_flops_target(l1_run):
    data = l1_run["data"]
    for side in ("base", "pruned"):
        for key in ("macs", "params", "accuracy", "latency_ms"):
            assert isinstance(data[side][key], (int, float)), (side, key)
        assert 0.0 <= data[side]["accuracy"] <= 1.0
    assert data["pruned"]["macs"] < data["base"]["macs"] and data["pruned"]["params"] < data["base"]["params"]
    reduction = 1 - data["pruned"]["macs"] / data["base"]["macs"]
    assert abs(reduction - 0.5) <= 0.01
    assert data["pruning"]["macs_reduction"] == pytest.approx(reduction)
    assert data["pruning"]["criterion"] == "l1" and data["pruning"]["strategy"] == "full"
    assert data["checkpoint"] == str(l1_run["out"])
    assert sorted(p.name for p in l1_run["folder"].iterdir()) == ["pruned.pt", "schedule.json"]


def test_prune_runs_the_recipe_and_reports_every_stage(l1_run):
    """Reconstruction is on by default; each stage is scored; the last one is the pruned accuracy."""
    pruning = l1_run["data"]["pruning"]
    expected = RecoveryRecipe(bn_batches=2, finetune_epochs=1, finetune_subset=256, batch_size=64)
    assert pruning["recipe"] == expected.to_dict()
    assert list(pruning["accuracy_stages"]) == ["pruned", "reconstructed", "bn_recalibrated", "finetuned"]
    assert all(0.0 <= a <= 1.0 for a in pruning["accuracy_stages"].values())
    assert l1_run["data"]["pruned"]["accuracy"] == pruning["accuracy_stages"]["finetuned"]


def test_pruned_checkpoint_records_the_recipe_and_evaluates_to_the_same_numbers(l1_run, capsys):
    model, spec = load_checkpoint(l1_run["out"])
    data = l1_run["data"]
    assert spec.name == "resnet20"
    assert spec.meta["pruning"]["criterion"] == "l1"
    assert spec.meta["pruning"]["recipe"] == data["pruning"]["recipe"]
    assert sum(p.numel() for p in model.parameters()) == data["pruned"]["params"]
    for layer, (kept, size) in data["pruning"]["channels"].items():
        assert spec.widths[layer]["out"] == kept <= size
    evaluated = run_json(capsys, "eval", "--checkpoint", l1_run["out"])
    assert evaluated["macs"] == data["pruned"]["macs"]
    assert evaluated["params"] == data["pruned"]["params"]
    assert evaluated["accuracy"] == pytest.approx(data["pruned"]["accuracy"])


def test_prune_with_schedule_file_reproduces_the_run(l1_run, trained_resnet20, tmp_path, capsys):
    schedule = json.loads(l1_run["schedule"].read_text())
    assert set(schedule) == set(l1_run["data"]["pruning"]["channels"])
    out = tmp_path / "again.pt"
    code, text, err = run_cli(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--ratios", l1_run["schedule"],
                              "--no-reconstruct", "--bn-batches", "0", *QUICK, "--out", out, "--quiet")
    assert code == 0, err
    assert "ratios" in text and "MACs -" in text and str(out) in text  # the readable summary
    assert "accuracy by stage: pruned " in text and "reconstructed" not in text
    rows = {}
    for line in text.splitlines()[1:7]:  # the title, then the table: header, rule, macs, params, accuracy, ...
        rows[line.split()[0]] = line.split()
    assert re.fullmatch(r"[+-]\d\.\d{4}", rows["accuracy"][-1])  # accuracy: a difference
    assert re.fullmatch(r"x\d+\.\d{3}", rows["macs"][-1]) and re.fullmatch(r"x\d+\.\d{3}", rows["latency_ms"][-1])
    _, spec = load_checkpoint(out)
    assert spec.meta["pruning"]["ratios"] == str(l1_run["schedule"])
    assert spec.meta["pruning"]["channels"] == l1_run["data"]["pruning"]["channels"]
    assert spec.meta["pruning"]["macs_reduction"] == pytest.approx(l1_run["data"]["pruning"]["macs_reduction"])
    assert spec.meta["pruning"]["recipe"]["reconstruct"] is False
    assert list(spec.meta["pruning"]["accuracy_stages"]) == ["pruned"]


def test_no_reconstruct_and_bn_can_read_calibration_batches(trained_resnet20, capsys):
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--ratio", "0.3", "--no-reconstruct",
                    "--bn-data", "calibration", "--bn-batches", "3", *QUICK)
    recipe = data["pruning"]["recipe"]
    assert recipe["reconstruct"] is False and recipe["bn_data"] == "calibration" and recipe["bn_batches"] == 3
    assert list(data["pruning"]["accuracy_stages"]) == ["pruned", "bn_recalibrated"]
    assert data["checkpoint"] is None


def test_round_to_keeps_channel_counts_in_multiples(trained_resnet20, capsys):
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--ratios", "global",
                    "--flops-reduction", "0.5", "--round-to", "8", "--no-reconstruct", "--bn-batches", "1", *QUICK)
    channels = data["pruning"]["channels"]
    assert all(kept % 8 == 0 or kept == size for kept, size in channels.values())
    assert any(kept < size for kept, size in channels.values())
    assert data["pruning"]["round_to"] == 8 and abs(data["pruning"]["macs_reduction"] - 0.5) <= 0.01
    code, _, err = run_cli(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--ratio", "0.3", "--round-to", "0")
    assert code == 2 and "--round-to must be >= 1, got 0" in err


def test_prune_entropy_concentration(trained_resnet20, tmp_path, capsys):
    out = tmp_path / "entropy.pt"
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--criterion", "entropy",
                    "--ratios", "concentration", "--flops-reduction", "0.3", "--bn-batches", "2", *QUICK, "--out", out)
    assert data["pruning"]["criterion"] == "entropy" and data["pruning"]["ratios"] == "concentration"
    assert abs(data["pruning"]["macs_reduction"] - 0.3) <= 0.01
    assert set(data["base"]) == set(data["pruned"]) >= {"macs", "params", "accuracy", "latency_ms"}
    assert load_checkpoint(out)[1].meta["pruning"]["criterion"] == "entropy"


def test_stats_file_feeds_hrank_inner(trained_resnet20, tmp_path, capsys, monkeypatch):
    stats_file = tmp_path / "act.pt"
    run_json(capsys, "stats", "--checkpoint", trained_resnet20["out"], "--calibration-images", "128", "--out", stats_file)

    import pruning.statistics

    def no_recompute(*args, **kwargs):
        raise AssertionError("prune --stats FILE must not recompute the statistics")

    monkeypatch.setattr(pruning.statistics, "collect_activation_stats", no_recompute)
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--stats", stats_file,
                    "--criterion", "hrank", "--strategy", "inner", "--ratio", "0.3", "--bn-batches", "0", *QUICK)
    assert data["pruning"]["criterion"] == "hrank" and data["pruning"]["strategy"] == "inner"
    channels = data["pruning"]["channels"]
    assert any(INNER_LAYER.match(n) and kept < size for n, (kept, size) in channels.items())
    # inner: only the convs inside residual blocks lose channels, never the residual stream
    for name, (kept, size) in channels.items():
        if not INNER_LAYER.match(name):
            assert kept == size, name
    assert data["pruned"]["macs"] < data["base"]["macs"]


def test_entropy_reads_a_stats_file_with_the_consumers_tensors(trained_resnet20, tmp_path, capsys, monkeypatch):
    """entropy's default source reads the tensors the consumers read: a stats file must hold
    them (stats --read-inputs); one without them is refused in one line naming the flag, before
    the model is evaluated."""
    with_inputs, without = tmp_path / "with.pt", tmp_path / "without.pt"
    for path, extra in ((with_inputs, ["--read-inputs"]), (without, [])):
        run_json(capsys, "stats", "--checkpoint", trained_resnet20["out"], "--calibration-images", "128",
                 "--out", path, *extra)
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], "--stats", with_inputs,
                    "--criterion", "entropy", "--ratio", "0.3", "--bn-batches", "0", *QUICK)
    assert data["pruned"]["macs"] < data["base"]["macs"]

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the base accuracy was evaluated before the stats file was checked")

    import pruning.training

    monkeypatch.setattr(pruning.training, "evaluate", no_evaluation)
    line = assert_bad_input(capsys, ["prune", "--checkpoint", trained_resnet20["out"], "--stats", without,
                                     "--criterion", "entropy", "--ratio", "0.3", "--quiet", *QUICK], "--read-inputs")
    assert f"the statistics in --stats {without} were collected without read_inputs" in line


def test_class_scores_prune_from_a_per_class_stats_file_and_refuse_one_without(trained_resnet20, tmp_path, capsys):
    """`prune --class-scores max` keeps other channels than the pooled score (it reads each
    channel's best class); a stats file without the per-class sums is refused naming --per-class."""
    per_class, pooled_only = tmp_path / "per-class.pt", tmp_path / "pooled.pt"
    for path, extra in ((per_class, ["--per-class"]), (pooled_only, [])):
        run_json(capsys, "stats", "--checkpoint", trained_resnet20["out"], "--calibration-images", "128",
                 "--out", path, *extra)
    common = ["prune", "--checkpoint", trained_resnet20["out"], "--criterion", "mean-activation", "--ratio", "0.5",
              "--bn-batches", "0", *QUICK]
    outs = {name: tmp_path / f"pruned-{name}.pt" for name in ("balanced", "pooled")}
    balanced = run_json(capsys, *common, "--stats", per_class, "--class-scores", "max", "--out", outs["balanced"])
    pooled = run_json(capsys, *common, "--stats", per_class, "--out", outs["pooled"])
    assert balanced["pruned"]["macs"] == pooled["pruned"]["macs"] < balanced["base"]["macs"]  # same layer widths
    weights = {name: load_checkpoint(path)[0].state_dict() for name, path in outs.items()}
    assert any(not torch.equal(w, weights["pooled"][k]) for k, w in weights["balanced"].items())  # other channels
    assert_bad_input(capsys, [*common, "--stats", pooled_only, "--class-scores", "max", "--quiet"], "--per-class")


@pytest.mark.parametrize("criterion", ["l1", "apoz"])
def test_prune_in_steps_writes_the_planned_widths_and_reports_each_step(criterion, trained_resnet20, tmp_path,
                                                                       capsys):
    """``--steps 3``: the recovered model is the last step's, at the one-shot plan's widths (a
    statistics criterion re-collects its statistics on the partly pruned model), and every step
    is reported; the final stages' seconds too."""
    quick = ["--criterion", criterion, "--flops-reduction", "0.5", "--bn-batches", "1", *QUICK]
    one_shot = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], *quick)
    out = tmp_path / "stepped.pt"
    data = run_json(capsys, "prune", "--checkpoint", trained_resnet20["out"], *quick, "--steps", "3",
                    "--step-order", "from_input", "--step-finetune-batches", "1", "--out", out)
    pruning = data["pruning"]
    assert pruning["recipe"]["steps"] == 3 and pruning["recipe"]["step_order"] == "from_input"
    assert pruning["channels"] == one_shot["pruning"]["channels"]  # the plan's widths, reached in steps
    assert [step["step"] for step in pruning["steps"]] == [1, 2, 3]
    reductions = [step["macs_reduction"] for step in pruning["steps"]]
    assert reductions == sorted(reductions) and reductions[-1] == pytest.approx(pruning["macs_reduction"])
    assert set(pruning["steps"][0]["seconds"]) == {"scored", "pruned", "reconstructed", "bn_recalibrated", "finetuned"}
    assert set(pruning["steps"][-1]["seconds"]) == {"scored", "pruned"}
    assert all(0.0 <= step["accuracy"] <= 1.0 for step in pruning["steps"][:-1])
    assert pruning["steps"][-1]["accuracy"] is None
    assert set(pruning["stage_seconds"]) == {"pruned", "reconstructed", "bn_recalibrated"}
    assert one_shot["pruning"]["steps"] == []
    model, spec = load_checkpoint(out)
    assert sum(p.numel() for p in model.parameters()) == data["pruned"]["params"] < data["base"]["params"]
    for layer, (kept, _) in pruning["channels"].items():
        assert spec.widths[layer]["out"] == kept
    assert spec.meta["pruning"]["steps"] == pruning["steps"]


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("--steps", "0", "--steps must be an integer >= 1, got 0"),
    ("--step-order", "sideways", "--step-order 'sideways' is unknown; valid: together, from_input"),
    ("--step-finetune-batches", "-1", "--step-finetune-batches must be an integer >= 0, got -1"),
])
def test_bad_step_options_are_one_line_naming_the_option(option, value, needle, trained_resnet20, capsys):
    assert_bad_input(capsys, ["prune", "--checkpoint", trained_resnet20["out"], "--ratio", "0.3", option, value], needle)
