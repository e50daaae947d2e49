"""`prunesweep export`: a (pruned) checkpoint as a checked ONNX or TorchScript file with its
latency next to PyTorch's, and every bad input refused in one line with nothing written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_helpers import SMALL_DATA, assert_bad_input, run_cli, run_json
from pruning.criteria import create_criterion
from pruning.export import INPUT_NAME, OUTPUT_NAME, TOLERANCE, onnx_session
from pruning.models import create_model
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import ModelSpec, load_checkpoint, save_checkpoint
from tiny_models import with_random_bn_stats

#: one untimed and two timed latency runs: the numbers are real, the module stays fast
QUICK = ["--warmup", "0", "--repeats", "2"]


@pytest.fixture(scope="module")
def pruned_resnet20(tmp_path_factory):
    """A ResNet-20 checkpoint pruned by half its MACs (l1, no data needed), as `prune` records it."""
    torch.manual_seed(0)
    model = with_random_bn_stats(create_model("resnet20", num_classes=10, in_channels=1), 0)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pruned = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(flops_reduction=0.5)).model
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint(path, pruned, ModelSpec("resnet20", 10, 1, (1, 28, 28),
                                            meta={"data": SMALL_DATA, "pruning": {"criterion": "l1"}}))
    return path


def own_model_checkpoint(folder, name: str):
    torch.manual_seed(0)
    path = folder / "model.pt"
    save_checkpoint(path, create_model(name, num_classes=10, in_channels=1), ModelSpec(name, 10, 1, (1, 28, 28)))
    return path


def test_export_onnx_of_a_pruned_checkpoint_is_checked_and_timed(pruned_resnet20, tmp_path, capsys):
    out = tmp_path / "deploy" / "pruned.onnx"  # the folder is created
    data = run_json(capsys, "export", "--checkpoint", pruned_resnet20, "--format", "onnx", "--out", out, *QUICK)
    assert data["out"] == str(out) and data["format"] == "onnx" and data["opset"] == 20
    assert data["model"] == "resnet20" and data["pruned"] is True and data["input_shape"] == [1, 28, 28]
    check = data["check"]
    assert check["passed"] and check["batch_size"] == 8
    assert check["max_abs_diff"] <= check["tolerance"] == pytest.approx(TOLERANCE * check["logits_scale"])
    assert set(data["latency_ms"]) == {"pytorch", "onnxruntime"}
    assert data["latency"] == {"device": "cpu", "batches": [1, 64], "threads": 1, "warmup": 0, "repeats": 2}
    for runtime in data["latency_ms"].values():
        assert set(runtime) == {"batch1", "batch64"} and all(ms > 0 for ms in runtime.values())
    model, _ = load_checkpoint(pruned_resnet20)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(out).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_torchscript_reloads_with_the_checkpoints_outputs(tmp_path, capsys):
    checkpoint = own_model_checkpoint(tmp_path, "user_models:tiny_cnn")
    out = tmp_path / "model.ts"
    code, text, err = run_cli(capsys, "export", "--checkpoint", checkpoint, "--format", "torchscript", "--out", out,
                              "--batch-size", "3", *QUICK)
    assert code == 0, err
    assert "TorchScript" in text and "max abs difference" in text and "torchscript" in text and "batch 64" in text
    model, _ = load_checkpoint(checkpoint)
    loaded = torch.jit.load(str(out))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5, rtol=0)


def test_an_unknown_format_is_refused_by_the_parser(pruned_resnet20, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli(capsys, "export", "--checkpoint", pruned_resnet20, "--format", "tflite", "--out", tmp_path / "m")
    assert done.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_directory_is_one_line(pruned_resnet20, tmp_path, capsys):
    assert_bad_input(capsys, ["export", "--checkpoint", pruned_resnet20, "--format", "onnx", "--out", tmp_path],
                     "--out", "is a directory")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert_bad_input(capsys, ["export", "--checkpoint", tmp_path / "nope.pt", "--format", "onnx", "--out", out],
                     "nope.pt", "does not exist", no_files=[out])


def test_a_model_onnx_cannot_represent_is_one_line_and_leaves_no_file(tmp_path, capsys):
    checkpoint = own_model_checkpoint(tmp_path, "export_models:zeta_cnn")
    out = tmp_path / "out" / "zeta.onnx"
    assert_bad_input(capsys, ["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out],
                     "model 'export_models:zeta_cnn' cannot be exported to ONNX", "zeta", no_files=[out])
    assert list(out.parent.iterdir()) == []  # no temporary file either


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_check_is_one_line_and_leaves_no_file(fmt, tmp_path, capsys):
    checkpoint = own_model_checkpoint(tmp_path, "export_models:noisy_cnn")
    out = tmp_path / "out" / "noisy.bin"
    assert_bad_input(capsys, ["export", "--checkpoint", checkpoint, "--format", fmt, "--out", out],
                     f"the {fmt} export of model 'export_models:noisy_cnn' does not match PyTorch", "tolerance",
                     no_files=[out])
    assert list(out.parent.iterdir()) == []


def test_bad_numbers_are_one_line(pruned_resnet20, tmp_path, capsys):
    for option, value in (("--batch-size", "0"), ("--threads", "0"), ("--repeats", "0"), ("--warmup", "-1")):
        out = tmp_path / "m.onnx"
        assert_bad_input(capsys, ["export", "--checkpoint", pruned_resnet20, "--format", "onnx", "--out", out,
                                  option, value], option, no_files=[out])
