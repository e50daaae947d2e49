"""`--model X --weights W` in place of `--checkpoint P`: a model of one's own (here an import path
to a factory in tests/user_models.py) pruned, evaluated, its statistics computed and trained,
and every bad model, weights file or option refused in one line, before anything is written."""
from __future__ import annotations

import sys

import pytest
import torch

from orchestrator import cli
from cli_helpers import QUICK, assert_bad_input, main_json, run_json
from pruning.structure import load_checkpoint
from user_models import tiny_cnn

MODEL = "user_models:tiny_cnn"


@pytest.fixture(scope="module")
def pruned(weights, fashion_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    data = main_json("prune", "--model", MODEL, "--weights", weights, "--model-kwargs", '{"width": 6}',
                     "--dataset", "fashion-mnist", "--criterion", "l1", "--flops-reduction", "0.5", *QUICK, "--out", out)
    return {"data": data, "out": out}


@pytest.mark.fashion_mnist
def test_prune_own_model_writes_a_checkpoint_that_reloads(pruned, weights, capsys):
    data = pruned["data"]
    assert abs(data["pruning"]["macs_reduction"] - 0.5) <= 0.05
    model, spec = load_checkpoint(pruned["out"])  # rebuilt from the recorded import path, options and widths
    assert spec.name == MODEL and spec.kwargs == {"width": 6}
    assert spec.meta["weights"] == str(weights) and spec.meta["data"]["name"] == "fashion-mnist"
    assert sum(p.numel() for p in model.parameters()) == data["pruned"]["params"]
    assert spec.widths["features.0"]["out"] < 6
    evaluated = run_json(capsys, "eval", "--checkpoint", pruned["out"])
    assert evaluated["model"] == MODEL and evaluated["macs"] == data["pruned"]["macs"]
    assert evaluated["accuracy"] == pytest.approx(data["pruned"]["accuracy"])


@pytest.mark.fashion_mnist
def test_eval_and_stats_take_a_model(weights, tmp_path, capsys):
    evaluated = run_json(capsys, "eval", "--model", MODEL, "--weights", weights, "--model-kwargs", '{"width": 6}',
                         "--test-subset", "64")
    assert evaluated["checkpoint"] is None and evaluated["model"] == MODEL and evaluated["dataset"] == "fashion-mnist"
    stats = run_json(capsys, "stats", "--model", MODEL, "--weights", weights, "--model-kwargs", '{"width": 6}',
                     "--calibration-images", "32", "--out", tmp_path / "act.pt")
    assert stats["model"] == MODEL and stats["layers"] == 2 and (tmp_path / "act.pt").is_file()


@pytest.mark.fashion_mnist
def test_train_starts_from_given_weights(weights, tmp_path, capsys):
    out = tmp_path / "trained.pt"
    data = run_json(capsys, "train", "--model", MODEL, "--weights", weights, "--model-kwargs", '{"width": 6}',
                    "--epochs", "1", "--train-subset", "64", "--calibration-size", "64", "--test-subset", "64",
                    "--batch-size", "32", "--out", out)
    assert data["model"] == MODEL
    model, spec = load_checkpoint(out)
    assert spec.name == MODEL and spec.kwargs == {"width": 6} and spec.meta["weights"] == str(weights)
    start = torch.load(weights, weights_only=True)
    assert not torch.equal(model.state_dict()["features.0.weight"], start["features.0.weight"])  # it trained


def _bad(tmp_path, kind: str):
    """A bad weights file of ``kind`` in tmp_path."""
    path = tmp_path / f"{kind}.pt"
    if kind == "module":
        torch.save(tiny_cnn(10, 1), path)
    elif kind == "narrow":
        torch.save(tiny_cnn(10, 1, width=2).state_dict(), path)
    return path


@pytest.mark.parametrize("argv, needles", [
    (["--model", MODEL, "--weights", "{module}"], ["torch.save(model.state_dict(), path)"]),
    (["--model", MODEL, "--weights", "{narrow}"], ["do not fit", "features.0.weight", "2x1x3x3", "8x1x3x3"]),
    (["--model", MODEL, "--weights", "/nonexistent/w.pt"], ["/nonexistent/w.pt", "does not exist"]),
    (["--model", "torchvision:resnet181"], ["unknown torchvision model 'resnet181'", "resnet18"]),
    (["--model", "nomodule_xyz:build"], ["cannot import 'nomodule_xyz'"]),
    (["--model", "user_models:not_a_model"], ["not a torch.nn.Module"]),
    (["--model", "user_models:shuffled_cnn"], ["does not run once pruned at layer 'shuffle'"]),
    (["--model", MODEL, "--model-kwargs", "[1]"], ["--model-kwargs", "JSON object"]),
    (["--model", MODEL, "--model-kwargs", '{"depth": 2}'], ["unknown option(s) depth"]),
    (["--checkpoint", "{checkpoint}", "--weights", "{narrow}"], ["--weights goes with --model"]),
])
def test_bad_models_and_weights(argv, needles, untrained, tmp_path, capsys, fashion_mnist):
    out = tmp_path / "out.pt"
    files = {"module": _bad(tmp_path, "module"), "narrow": _bad(tmp_path, "narrow"), "checkpoint": untrained}
    argv = [str(files[a[1:-1]]) if a[1:-1] in files else a for a in argv]
    before = sorted(tmp_path.iterdir())
    assert_bad_input(capsys, ["prune", *argv, "--ratio", "0.3", "--out", out], *needles, no_files=[out])
    assert sorted(tmp_path.iterdir()) == before


def test_timm_not_installed_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    out = tmp_path / "out.pt"
    assert_bad_input(capsys, ["prune", "--model", "timm:resnet18", "--ratio", "0.3", "--out", out],
                     "pip install 'prunesweep[timm]'", no_files=[out])


@pytest.mark.parametrize("command", [["eval"], ["stats", "--out", "x.pt"], ["prune"],
                                     ["compare", "--criteria", "l1", "--flops-reductions", "0.5"]])
def test_checkpoint_and_model_are_exclusive(command, untrained, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        cli.main([*command, "--checkpoint", str(untrained), "--model", MODEL])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    if command[0] == "compare":  # compare also takes --config/--resume/--report: its own one line
        assert cli.main(command) == 2
        assert "give --config FILE.yaml, --resume/--report RUN_DIR, or --checkpoint/--model" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as exc:
        cli.main(command)
    assert exc.value.code == 2 and "one of the arguments --checkpoint --model is required" in capsys.readouterr().err
