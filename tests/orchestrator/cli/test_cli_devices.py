"""``--device``, ``--amp``, ``--loader-workers`` and the GPU options on the command line: bad
values are one ``error:`` line and exit 2 before any work; ``--device cpu`` is today's result."""
from __future__ import annotations

import pytest
import torch
import yaml

from cli_helpers import assert_bad_input, run_json

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.fashion_mnist

EVAL = ("eval", "--test-subset", "64")


def test_device_cpu_is_bit_identical_to_the_default(untrained, capsys):
    default = run_json(capsys, *EVAL, "--checkpoint", untrained)
    on_cpu = run_json(capsys, *EVAL, "--checkpoint", untrained, "--device", "cpu")
    assert on_cpu["accuracy"] == default["accuracy"] and on_cpu["loss"] == default["loss"]
    assert on_cpu["macs"] == default["macs"] and on_cpu["params"] == default["params"]
    workers = run_json(capsys, *EVAL, "--checkpoint", untrained, "--device", "cpu", "--loader-workers", "2")
    assert workers["accuracy"] == default["accuracy"] and workers["loss"] == default["loss"]


def test_amp_on_the_cpu_is_one_line(untrained, tmp_path, capsys):
    assert_bad_input(capsys, [*EVAL, "--checkpoint", untrained, "--device", "cpu", "--amp", "bf16"],
                     "--amp needs a CUDA device; got --device cpu")
    out = tmp_path / "model.pt"
    assert_bad_input(capsys, ["train", "--device", "cpu", "--amp", "fp16", "--epochs", "1", "--out", out],
                     "--amp needs a CUDA device; got --device cpu", no_files=[out])
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--device", "cpu", "--amp", "bf16", "--ratio", "0.5"],
                     "--amp needs a CUDA device")


@no_cuda
@pytest.mark.parametrize("command", [
    ("eval",), ("stats", "--out", "never.pt"), ("prune", "--ratio", "0.5"),
])
def test_cuda_without_cuda_is_one_line(untrained, capsys, command):
    assert_bad_input(capsys, [*command, "--checkpoint", untrained, "--device", "cuda"],
                     "--device cuda: CUDA is not available on this machine; valid here: auto, cpu")


@no_cuda
def test_auto_amp_without_cuda_names_the_cpu(untrained, capsys):
    assert_bad_input(capsys, [*EVAL, "--checkpoint", untrained, "--amp", "fp16"], "got --device cpu")


def test_bad_device_and_worker_values(untrained, tmp_path, capsys):
    assert_bad_input(capsys, [*EVAL, "--checkpoint", untrained, "--device", "tpu"],
                     "unknown --device 'tpu'; valid: auto, cpu, cuda, cuda:N, mps")
    assert_bad_input(capsys, [*EVAL, "--checkpoint", untrained, "--loader-workers", "-1"], "--loader-workers must be >= 0")
    assert_bad_input(capsys, ["stats", "--checkpoint", untrained, "--out", tmp_path / "s.pt", "--workers", "1",
                              "--gpus-per-worker", "-0.5"], "--gpus-per-worker must be >= 0")


def test_sweep_and_compare_gpu_options_fail_before_ray(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"checkpoint": str(tmp_path / "base.pt"), "space": {"name": "uniform"},
                                      "run_dir": str(run_dir)}))
    assert_bad_input(capsys, ["sweep", "--config", config, "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0")
    assert_bad_input(capsys, ["sweep", "--config", config, "--device", "cpu", "--gpus-per-trial", "1"],
                     "--device cpu runs trials without GPUs")
    assert_bad_input(capsys, ["sweep", "--resume", tmp_path, "--device", "cuda"], "drop --device")
    assert_bad_input(capsys, ["compare", "--checkpoint", tmp_path / "base.pt", "--criteria", "l1",
                              "--flops-reductions", "0.5", "--gpus-per-trial", "-2", "--run-dir", run_dir],
                     "--gpus-per-trial must be >= 0")
    assert not run_dir.exists()


def test_trial_gpus_resolution():
    from argparse import Namespace

    from orchestrator.cli.options import trial_gpus

    assert trial_gpus(Namespace(device="auto", gpus_per_trial=None), 0.0) == 0.0
    assert trial_gpus(Namespace(device="auto", gpus_per_trial=None), 0.5) == 0.5
    assert trial_gpus(Namespace(device="auto", gpus_per_trial=0.25), 0.5) == 0.25
    assert trial_gpus(Namespace(device="cpu", gpus_per_trial=None), 0.5) == 0.0
    assert trial_gpus(Namespace(device="cuda", gpus_per_trial=None), 0.0) == 1.0
    assert trial_gpus(Namespace(device="cuda", gpus_per_trial=None), 0.5) == 0.5


@needs_cuda
def test_eval_and_train_on_cuda_with_amp(untrained, tmp_path, capsys):
    on_cpu = run_json(capsys, *EVAL, "--checkpoint", untrained, "--device", "cpu")
    on_gpu = run_json(capsys, *EVAL, "--checkpoint", untrained, "--device", "cuda")
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=2 / 64)
    run_json(capsys, *EVAL, "--checkpoint", untrained, "--device", "cuda", "--amp", "bf16")
    data = run_json(capsys, "train", "--device", "cuda", "--amp", "fp16", "--epochs", "1", "--train-subset", "256",
                    "--calibration-size", "64", "--test-subset", "64", "--out", tmp_path / "m.pt")
    assert 0 <= data["test_accuracy"] <= 1 and (tmp_path / "m.pt").is_file()
