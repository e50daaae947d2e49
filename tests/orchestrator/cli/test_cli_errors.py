"""Bad input: one `error:` line on stderr naming the bad value, exit 2, nothing written.

Most cases are refused before any data is loaded, so they run without the dataset too."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import SMALL_DATA, assert_bad_input
from pruning.models import InputShapeError, create_model
from pruning.structure import ModelSpec, check_fits, save_checkpoint


@pytest.mark.parametrize("argv, needles", [
    (["train", "--model", "nope"], ["'nope'", "resnet20", "vgg16"]),
    (["train", "--dataset", "nope"], ["'nope'", "fashion-mnist", "cifar10"]),
    (["train", "--batch-size", "0"], ["--batch-size", "0"]),
    (["prune", "--criterion", "nope", "--ratio", "0.3"], ["'nope'", "l1", "entropy", "hrank"]),
    (["prune", "--strategy", "nope", "--ratio", "0.3"], ["'nope'", "full", "inner"]),
    (["prune", "--ratios", "nope", "--ratio", "0.3"], ["'nope'", "uniform", "concentration", "JSON"]),
    (["prune", "--ratio", "1.0"], ["ratio", "1.0"]),
    (["prune", "--ratio", "-0.1"], ["ratio", "-0.1"]),
    (["prune", "--flops-reduction", "1.5"], ["flops_reduction", "1.5"]),
    (["prune", "--flops-reduction", "0.3", "--bn-batches", "-1"], ["--bn-batches", "-1"]),
    (["prune", "--flops-reduction", "0.3", "--bn-data", "test"], ["--bn-data", "'test'", "train", "calibration"]),
    (["prune", "--flops-reduction", "0.3", "--distill", "2"], ["--distill", "2"]),
    (["prune", "--ratios", "concentration", "--ratio", "0.3"], ["--flops-reduction"]),
    (["prune", "--ratio", "0.3", "--finetune-epochs", "1", "--finetune-subset", "0"], ["--finetune-subset", "0"]),
    (["prune", "--ratio", "0.3", "--finetune-epochs", "1", "--finetune-subset", "-5"], ["--finetune-subset", "-5"]),
    (["prune", "--ratio", "0.3", "--finetune-max-grad-norm", "abc"], ["--finetune-max-grad-norm", "'abc'", "none"]),
    (["prune", "--ratio", "0.3", "--finetune-max-grad-norm", "0"], ["--finetune-max-grad-norm", "0"]),
    (["prune", "--ratio", "0.3", "--calibration-images", "0"], ["--calibration-images", "0"]),
    (["prune", "--ratio", "0.3", "--tau", "1.5"], ["--tau", "1.5"]),
    (["prune", "--ratio", "0.3", "--temperature", "2"], ["--temperature is gone", "--distill-temperature"]),
    (["prune", "--ratio", "0.3", "--no-recover"], ["--no-recover is gone", "--no-reconstruct"]),
    (["prune", "--ratio", "0.3", "--recover"], ["--recover is gone", "--reconstruct"]),
    (["prune", "--ratio", "0.3", "--workers", "-1"], ["--workers", "-1"]),
    (["prune", "--ratio", "0.3", "--address", "auto"], ["--address", "--workers"]),
    (["prune", "--criterion", "hrank", "--ratio", "0.3", "--stats", "/nonexistent/act.pt"],
     ["--stats", "/nonexistent/act.pt", "does not exist"]),
    (["prune", "--criterion", "l1", "--ratio", "0.3", "--stats-source", "consumer"], ["--stats-source", "'l1'"]),
    (["prune", "--criterion", "hrank", "--ratio", "0.3", "--stats-source", "both"],
     ["--stats-source", "'both'", "producer", "consumer"]),
    (["prune", "--criterion", "l1", "--ratio", "0.3", "--class-scores", "max"], ["--class-scores", "'l1'"]),
    (["prune", "--criterion", "entropy", "--ratio", "0.3", "--class-scores", "max"],
     ["--class-scores", "'entropy'", "apoz, hrank, mean-activation"]),
    (["prune", "--criterion", "apoz", "--ratio", "0.3", "--class-scores", "best"], ["'best'", "pooled, max"]),
    (["prune"], ["--flops-reduction", "--ratio"]),
    (["stats", "--dataset", "nope"], ["'nope'", "fashion-mnist"]),
    (["stats", "--workers", "1", "--cpus-per-worker", "0"], ["--cpus-per-worker", "0"]),
    (["stats", "--bins", "1"], ["--bins", "1"]),
    (["eval", "--dataset", "nope"], ["'nope'", "fashion-mnist"]),
])
def test_bad_names_and_values(argv, needles, untrained, tmp_path, capsys):
    out = tmp_path / "out.pt"
    argv = list(argv)
    if argv[0] in ("prune", "eval", "stats"):
        argv += ["--checkpoint", str(untrained)]
    if argv[0] in ("prune", "train", "stats"):
        argv += ["--out", str(out)]
    assert_bad_input(capsys, argv, *needles, no_files=[out])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, option", [
    (["train"], "--out"),
    (["stats", "--checkpoint", "{checkpoint}"], "--out"),
    (["prune", "--checkpoint", "{checkpoint}", "--ratio", "0.3"], "--out"),
    (["prune", "--checkpoint", "{checkpoint}", "--ratio", "0.3"], "--schedule-out"),
])
def test_an_output_path_that_is_a_directory_is_refused_before_any_work(argv, option, untrained, tmp_path, capsys):
    """Refused first: a missing data root (found only by loading data) is not what it reports."""
    folder = tmp_path / "existing"
    folder.mkdir()
    argv = [a.format(checkpoint=untrained) for a in argv] + [option, str(folder), "--data-root", "/nonexistent"]
    assert_bad_input(capsys, argv, option, str(folder), "is a directory")
    assert list(folder.iterdir()) == []


def test_schedule_file_errors(untrained, tmp_path, capsys):
    out = tmp_path / "out.pt"
    missing = tmp_path / "missing.json"
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--ratios", missing, "--out", out],
                     str(missing), "does not exist", no_files=[out])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"conv1": 1.5}))
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--ratios", bad, "--out", out],
                     "conv1", "1.5", no_files=[out])
    bad.write_text(json.dumps({"conv1": 0.5}))
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--ratios", bad, "--ratio", "0.2", "--out", out],
                     "--ratio", no_files=[out])


def test_missing_data_root_says_how_to_get_the_data(untrained, tmp_path, capsys):
    out = tmp_path / "out.pt"
    line = assert_bad_input(capsys, ["train", "--data-root", "/nonexistent", "--out", out],
                            "/nonexistent", "--data-root", no_files=[out])
    assert "apt-get install" in line
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--data-root", "/nonexistent", "--ratio", "0.3",
                              "--out", out], "/nonexistent", "--data-root", no_files=[out])
    assert_bad_input(capsys, ["eval", "--checkpoint", untrained, "--data-root", "/nonexistent"], "/nonexistent")
    assert_bad_input(capsys, ["stats", "--checkpoint", untrained, "--data-root", "/nonexistent", "--out", out],
                     "/nonexistent", no_files=[out])


def test_other_dataset_with_empty_root(untrained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.pt"
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--dataset", "cifar10", "--data-root", empty,
                              "--ratio", "0.3", "--out", out], "cifar10", str(empty), "--download", no_files=[out])
    assert_bad_input(capsys, ["eval", "--checkpoint", untrained, "--dataset", "mnist"], "mnist", "--data-root")


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    out = tmp_path / "out.pt"
    missing = tmp_path / "missing.pt"
    assert_bad_input(capsys, ["eval", "--checkpoint", missing], str(missing), "does not exist")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(4096))
    for argv in (["eval"], ["stats", "--out", out], ["prune", "--ratio", "0.3", "--out", out]):
        assert_bad_input(capsys, [*argv, "--checkpoint", corrupt], str(corrupt), "not a prunesweep checkpoint",
                         no_files=[out])
    no_spec = tmp_path / "nospec.pt"
    torch.save({"state_dict": {}}, no_spec)
    assert_bad_input(capsys, ["eval", "--checkpoint", no_spec], str(no_spec), "not a prunesweep checkpoint")


def test_state_dict_that_does_not_fit_its_spec(untrained, tmp_path, capsys):
    payload = torch.load(untrained, weights_only=True)
    out = tmp_path / "out.pt"
    other_model = tmp_path / "resnet56_weights.pt"
    torch.save({"spec": payload["spec"], "state_dict": create_model("resnet56", 10, 1).state_dict()}, other_model)
    assert_bad_input(capsys, ["prune", "--checkpoint", other_model, "--ratio", "0.3", "--out", out],
                     str(other_model), "'resnet20'", "does not fit", "layer1.3", no_files=[out])
    state = dict(payload["state_dict"])
    state["conv1.weight"] = torch.zeros(8, 1, 3, 3)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({"spec": payload["spec"], "state_dict": state}, wrong_shape)
    assert_bad_input(capsys, ["eval", "--checkpoint", wrong_shape], "does not fit", "conv1.weight", "size mismatch")


def test_check_fits_names_the_channel_mismatch():
    class Splits:  # the fields check_fits reads
        in_channels, input_size, num_classes, name = 3, (28, 28), 10, "cifar10"

    model = create_model("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(InputShapeError, match=r"resnet20 cannot run on inputs of shape 3x28x28: .*1 input channel"):
        check_fits(model, ModelSpec("resnet20", 10, 1, (1, 28, 28)), Splits)
    rgb = ModelSpec("resnet20", 10, 3, (3, 28, 28))
    assert check_fits(create_model("resnet20", 10, 3), rgb, Splits) == (3, 28, 28)


@pytest.mark.fashion_mnist
def test_checkpoint_for_three_channels_on_fashion_mnist(tmp_path, capsys):
    ckpt = tmp_path / "rgb.pt"
    save_checkpoint(ckpt, create_model("resnet20", 10, 3), ModelSpec("resnet20", 10, 3, (3, 28, 28),
                                                                     meta={"data": SMALL_DATA}))
    out = tmp_path / "out.pt"
    assert_bad_input(capsys, ["prune", "--checkpoint", ckpt, "--ratio", "0.3", "--out", out],
                     "resnet20", "1x28x28", "3 input channels, got 1", no_files=[out])
    five = tmp_path / "five.pt"
    save_checkpoint(five, create_model("resnet20", 5, 1), ModelSpec("resnet20", 5, 1, (1, 28, 28),
                                                                    meta={"data": SMALL_DATA}))
    assert_bad_input(capsys, ["eval", "--checkpoint", five], "5 classes", "10")


@pytest.mark.fashion_mnist
def test_unreachable_flops_target(untrained, tmp_path, capsys):
    out, schedule = tmp_path / "out.pt", tmp_path / "schedule.json"
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--strategy", "inner", "--flops-reduction", "0.9",
                              "--bn-batches", "0", "--calibration-images", "128", "--out", out,
                              "--schedule-out", schedule, "--quiet"],
                     "0.9", "cannot be met", no_files=[out, schedule])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("criterion", ["l1", "bn-scale", "entropy"])
def test_a_baseline_with_nan_weights_is_refused_before_any_scoring(criterion, untrained, tmp_path, capsys):
    """Whatever the criterion, one line naming the first non-finite tensor; no checkpoint written."""
    payload = torch.load(untrained, weights_only=False)
    first = next(name for name in payload["state_dict"] if name.endswith("conv1.weight"))
    payload["state_dict"][first][0, 0] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(payload, broken)
    out = tmp_path / "pruned.pt"
    assert_bad_input(capsys, ["prune", "--checkpoint", str(broken), "--criterion", criterion, "--flops-reduction", "0.3",
                              "--out", str(out)], "non-finite", repr(first), no_files=[out])


def test_finite_weights_whose_activations_overflow_are_refused_by_the_statistics_pass(untrained, tmp_path, capsys):
    """Finite weights, non-finite activations (two layers scaled by 1e30 overflow float32): a
    statistics criterion stops in one line naming the module; no checkpoint written."""
    payload = torch.load(untrained, weights_only=False)
    for name in ("conv1.weight", "layer1.0.conv1.weight"):
        payload["state_dict"][name] = payload["state_dict"][name] * 1e30
    overflowing = tmp_path / "overflow.pt"
    torch.save(payload, overflowing)
    out = tmp_path / "pruned.pt"
    assert_bad_input(capsys, ["prune", "--checkpoint", str(overflowing), "--criterion", "entropy",
                              "--flops-reduction", "0.3", "--out", str(out)],
                     "produced non-finite activations (NaN or inf)", no_files=[out])
