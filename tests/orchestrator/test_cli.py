"""End-to-end tests of the ``prunesweep`` command line.

Everything runs in-process through :func:`orchestrator.cli.main` (fast, output captured with
``capsys``); two tests run the installed console script as a subprocess. One small ResNet-20 is
trained once per module on 512 real Fashion-MNIST images; tests that need the dataset are
skipped when it is not installed. Latency is measured with fewer repetitions than the default
(the numbers are still real measurements) to keep the module fast on a busy machine.
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from orchestrator import cli
from orchestrator.cli import commands
from pruning.structure import ModelSpec, load_checkpoint, save_checkpoint
from pruning.data import FASHION_MNIST_ROOT, DataConfig
from pruning.structure import measure_latency
from pruning.models import create_model

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_DATA = all(
    (Path(FASHION_MNIST_ROOT) / n).is_file() or (Path(FASHION_MNIST_ROOT) / f"{n}.gz").is_file() for n in _IDX
)
needs_data = pytest.mark.skipif(
    not HAVE_DATA,
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)",
)

#: a quick data config for hand-built checkpoints (what `train` below records)
SMALL_DATA = asdict(DataConfig(name="fashion-mnist", calibration_size=256, train_subset=512, test_subset=256))
#: a fast but real latency measurement
_fast_latency = functools.partial(measure_latency, warmup=1, repeats=2)
INNER_LAYER = re.compile(r"layer\d\.\d+\.conv1$")


# --- helpers -----------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run_cli(capsys, *argv, "--json", "--quiet")
    assert code == 0, err
    assert out.count("\n") == 1, f"--json must print exactly one line: {out!r}"
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def assert_bad_input(capsys, argv, *needles: str, no_files=()) -> str:
    """Exit 2, one `error:` line on stderr naming each needle, nothing on stdout, no files."""
    code, out, err = run_cli(capsys, *argv)
    assert code == cli.EXIT_BAD_INPUT == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    for path in no_files:
        assert not Path(path).exists(), f"{path} was written despite the error"
    return lines[0]


@pytest.fixture
def fast_latency(monkeypatch):
    monkeypatch.setattr(commands, "measure_latency", _fast_latency)


def main_json(argv: list[str]) -> dict:
    """`main(argv + --json --quiet)` for module fixtures (no capsys there): the parsed JSON."""
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buffer):
        mp.setattr(commands, "measure_latency", _fast_latency)
        code = cli.main([str(a) for a in argv] + ["--json", "--quiet"])
    assert code == 0
    assert buffer.getvalue().count("\n") == 1
    return json.loads(buffer.getvalue())


# --- module fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private PRUNESWEEP_CACHE for the whole module (restored afterwards)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESWEEP_CACHE", str(cache))
        yield {"cache": cache}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, env) -> Path:
    """A fresh ResNet-20 checkpoint for Fashion-MNIST, built without any data."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "resnet20.pt"
    save_checkpoint(path, create_model("resnet20", num_classes=10, in_channels=1),
                    ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"data": SMALL_DATA}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """`prunesweep train` once per module: its JSON result and the checkpoint path."""
    if not HAVE_DATA:
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT}")
    out = tmp_path_factory.mktemp("train") / "tmp" / "base.pt"
    data = main_json(["train", "--model", "resnet20", "--epochs", "1", "--train-subset", "512",
                      "--calibration-size", "256", "--test-subset", "256", "--batch-size", "64", "--out", out])
    return {"data": data, "out": out}


@pytest.fixture(scope="module")
def l1_run(tmp_path_factory, trained):
    """`prune --criterion l1 --flops-reduction 0.5` with fine-tuning, checkpoint and schedule out."""
    folder = tmp_path_factory.mktemp("l1")
    out, schedule = folder / "pruned.pt", folder / "schedule.json"
    data = main_json(["prune", "--checkpoint", trained["out"], "--criterion", "l1", "--flops-reduction", "0.5",
                      "--finetune-epochs", "1", "--finetune-subset", "256", "--test-subset", "256",
                      "--bn-batches", "2", "--calibration-images", "128", "--batch-size", "64", "--out", out,
                      "--schedule-out", schedule])
    return {"data": data, "out": out, "schedule": schedule, "folder": folder}


# --- info --------------------------------------------------------------------------------------


def test_info_json_lists_everything(capsys):
    data = run_json(capsys, "info")
    for key in ("models", "criteria", "datasets", "strategies", "ratios"):
        assert isinstance(data[key], list) and data[key], key
    assert "resnet20" in data["models"]
    assert {"l1", "entropy", "hrank"} <= set(data["criteria"])
    assert "fashion-mnist" in data["datasets"]
    assert data["strategies"] == ["full", "inner"]
    assert {"uniform", "concentration", "FILE.json"} <= set(data["ratios"])


def test_info_text(capsys):
    code, out, err = run_cli(capsys, "info")
    assert code == 0 and err == ""
    assert "resnet20" in out and "fashion-mnist" in out and "inner" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def _console_script() -> str:
    script = Path(sys.executable).with_name("prunesweep")
    return str(script) if script.exists() else shutil.which("prunesweep") or "prunesweep"


def test_console_script_info_json():
    proc = subprocess.run([_console_script(), "info", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resnet20" in json.loads(proc.stdout)["models"]


def test_console_script_bad_input_exits_2(tmp_path):
    out = tmp_path / "x.pt"
    proc = subprocess.run([_console_script(), "train", "--model", "nope", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: unknown model 'nope'") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


# --- argparse's own errors ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    [],                                   # no command
    ["frobnicate"],                       # unknown command
    ["train"],                            # missing --out
    ["prune"],                            # missing --checkpoint
    ["stats", "--checkpoint", "x.pt"],    # missing --out
    ["prune", "--checkpoint", "x.pt", "--ratio", "0.2", "--flops-reduction", "0.2"],  # mutually exclusive
    ["prune", "--checkpoint", "x.pt", "--ratio", "half"],                          # not a float
])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip()


# --- train / eval ------------------------------------------------------------------------------


@needs_data
def test_train_json_fields_and_checkpoint(trained, capsys, fast_latency):
    data, path = trained["data"], trained["out"]
    assert {"model", "dataset", "epochs", "train_seconds", "test_accuracy", "test_loss", "checkpoint",
            "history"} <= set(data)
    assert data["model"] == "resnet20" and data["dataset"] == "fashion-mnist" and data["epochs"] == 1
    assert data["checkpoint"] == str(path)
    assert 0.0 <= data["test_accuracy"] <= 1.0 and data["test_loss"] > 0 and data["train_seconds"] > 0
    assert len(data["history"]) == 1 and data["history"][0]["epoch"] == 1

    model, spec = load_checkpoint(path)
    assert spec.name == "resnet20" and spec.num_classes == 10 and spec.in_channels == 1
    assert tuple(spec.input_shape) == (1, 28, 28)
    assert spec.meta["data"]["train_subset"] == 512 and spec.meta["data"]["calibration_size"] == 256
    assert spec.meta["test_accuracy"] == data["test_accuracy"]
    assert not model.training
    assert [p.name for p in path.parent.iterdir()] == ["base.pt"]  # no temporary leftovers

    evaluated = run_json(capsys, "eval", "--checkpoint", path)
    assert evaluated["model"] == "resnet20" and evaluated["dataset"] == "fashion-mnist"
    assert evaluated["accuracy"] == pytest.approx(data["test_accuracy"])
    assert evaluated["macs"] > 0 and evaluated["params"] == sum(p.numel() for p in model.parameters())
    assert evaluated["latency_ms"] > 0


# --- prune -------------------------------------------------------------------------------------


@needs_data
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
    assert list(data["pruning"]["accuracy_stages"]) == ["pruned", "bn_recalibrated", "finetuned"]
    assert data["pruned"]["accuracy"] == data["pruning"]["accuracy_stages"]["finetuned"]
    assert data["checkpoint"] == str(l1_run["out"])
    assert sorted(p.name for p in l1_run["folder"].iterdir()) == ["pruned.pt", "schedule.json"]


@needs_data
def test_pruned_checkpoint_loads_and_evaluates_to_the_same_macs(l1_run, capsys, fast_latency):
    model, spec = load_checkpoint(l1_run["out"])
    assert spec.name == "resnet20"
    assert spec.meta["pruning"]["criterion"] == "l1"
    data = l1_run["data"]
    assert sum(p.numel() for p in model.parameters()) == data["pruned"]["params"]
    for layer, (kept, size) in data["pruning"]["channels"].items():
        assert spec.widths[layer]["out"] == kept <= size
    evaluated = run_json(capsys, "eval", "--checkpoint", l1_run["out"])
    assert evaluated["macs"] == data["pruned"]["macs"]
    assert evaluated["params"] == data["pruned"]["params"]
    assert evaluated["accuracy"] == pytest.approx(data["pruned"]["accuracy"])


@needs_data
def test_prune_with_schedule_file_reproduces_the_run(l1_run, trained, tmp_path, capsys, fast_latency):
    trained = trained["out"]
    schedule = json.loads(l1_run["schedule"].read_text())
    assert set(schedule) == set(l1_run["data"]["pruning"]["channels"])
    out = tmp_path / "again.pt"
    code, text, err = run_cli(capsys, "prune", "--checkpoint", trained, "--ratios", l1_run["schedule"],
                              "--bn-batches", "0", "--calibration-images", "128", "--out", out, "--quiet")
    assert code == 0, err
    assert "ratios" in text and "MACs -" in text and str(out) in text  # the readable summary
    rows = {}
    for line in text.splitlines()[1:7]:  # the title, then the table: header, rule, macs, params, accuracy, ...
        rows[line.split()[0]] = line.split()
    assert re.fullmatch(r"[+-]\d\.\d{4}", rows["accuracy"][-1])  # accuracy: a difference
    assert re.fullmatch(r"x\d+\.\d{3}", rows["macs"][-1]) and re.fullmatch(r"x\d+\.\d{3}", rows["latency_ms"][-1])
    _, spec = load_checkpoint(out)
    assert spec.meta["pruning"]["ratios"] == str(l1_run["schedule"])
    assert spec.meta["pruning"]["channels"] == l1_run["data"]["pruning"]["channels"]
    assert spec.meta["pruning"]["macs_reduction"] == pytest.approx(l1_run["data"]["pruning"]["macs_reduction"])


@needs_data
def test_prune_entropy_concentration(trained, tmp_path, capsys, fast_latency):
    trained = trained["out"]
    out = tmp_path / "entropy.pt"
    data = run_json(capsys, "prune", "--checkpoint", trained, "--criterion", "entropy", "--ratios", "concentration",
                    "--flops-reduction", "0.3", "--calibration-images", "128", "--bn-batches", "2", "--out", out)
    assert data["pruning"]["criterion"] == "entropy" and data["pruning"]["ratios"] == "concentration"
    assert abs(data["pruning"]["macs_reduction"] - 0.3) <= 0.01
    assert set(data["base"]) == set(data["pruned"]) >= {"macs", "params", "accuracy", "latency_ms"}
    assert load_checkpoint(out)[1].meta["pruning"]["criterion"] == "entropy"


@needs_data
def test_stats_file_feeds_hrank_inner(trained, tmp_path, capsys, monkeypatch, fast_latency):
    trained = trained["out"]
    stats_file = tmp_path / "stats" / "act.pt"  # its folder does not exist yet, as for train/prune --out
    data = run_json(capsys, "stats", "--checkpoint", trained, "--calibration-images", "128", "--out", stats_file)
    assert data["images"] == 128 and data["layers"] > 0 and data["out"] == str(stats_file)
    assert stats_file.is_file()

    import pruning.statistics

    def no_recompute(*args, **kwargs):
        raise AssertionError("prune --stats FILE must not recompute the statistics")

    monkeypatch.setattr(pruning.statistics, "collect_activation_stats", no_recompute)
    data = run_json(capsys, "prune", "--checkpoint", trained, "--stats", stats_file, "--criterion", "hrank",
                    "--strategy", "inner", "--ratio", "0.3", "--bn-batches", "0", "--calibration-images", "128")
    assert data["pruning"]["criterion"] == "hrank" and data["pruning"]["strategy"] == "inner"
    assert data["checkpoint"] is None
    channels = data["pruning"]["channels"]
    assert any(INNER_LAYER.match(n) and kept < size for n, (kept, size) in channels.items())
    # inner: only the convs inside residual blocks lose channels, never the residual stream
    for name, (kept, size) in channels.items():
        if not INNER_LAYER.match(name):
            assert kept == size, name
    assert data["pruned"]["macs"] < data["base"]["macs"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, needles", [
    (["train", "--model", "nope"], ["'nope'", "resnet20", "vgg16"]),
    (["train", "--dataset", "nope"], ["'nope'", "fashion-mnist", "cifar10"]),
    (["prune", "--criterion", "nope", "--ratio", "0.3"], ["'nope'", "l1", "entropy", "hrank"]),
    (["prune", "--strategy", "nope", "--ratio", "0.3"], ["'nope'", "full", "inner"]),
    (["prune", "--ratios", "nope", "--ratio", "0.3"], ["'nope'", "uniform", "concentration", "JSON"]),
    (["prune", "--ratio", "1.0"], ["ratio", "1.0"]),
    (["prune", "--ratio", "-0.1"], ["ratio", "-0.1"]),
    (["prune", "--flops-reduction", "1.5"], ["flops_reduction", "1.5"]),
    (["prune", "--flops-reduction", "0.3", "--bn-batches", "-1"], ["--bn-batches", "-1"]),
    (["prune", "--ratios", "concentration", "--ratio", "0.3"], ["--flops-reduction"]),
    (["prune", "--ratio", "0.3", "--finetune-epochs", "1", "--finetune-subset", "0"], ["--finetune-subset", "0"]),
    (["prune", "--ratio", "0.3", "--finetune-epochs", "1", "--finetune-subset", "-5"], ["--finetune-subset", "-5"]),
    (["prune", "--criterion", "hrank", "--ratio", "0.3", "--stats", "/nonexistent/act.pt"],
     ["--stats", "/nonexistent/act.pt", "does not exist"]),
    (["prune"], ["--flops-reduction", "--ratio"]),
    (["stats", "--dataset", "nope"], ["'nope'", "fashion-mnist"]),
    (["eval", "--dataset", "nope"], ["'nope'", "fashion-mnist"]),
])
def test_bad_names_and_values(argv, needles, untrained, tmp_path, capsys):
    """Rejected before any data is loaded, so these run without the dataset too."""
    out = tmp_path / "out.pt"
    argv = list(argv)
    if argv[0] in ("prune", "eval", "stats"):
        argv += ["--checkpoint", str(untrained)]
    if argv[0] in ("prune", "train", "stats"):
        argv += ["--out", str(out)]
    assert_bad_input(capsys, argv, *needles, no_files=[out])
    assert list(tmp_path.iterdir()) == []


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
    from pruning.models import InputShapeError

    class Splits:  # the two fields _check_fits reads, plus the class count and name
        in_channels, input_size, num_classes, name = 3, (28, 28), 10, "cifar10"

    model = create_model("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(InputShapeError, match=r"resnet20 cannot run on inputs of shape 3x28x28: .*1 input channel"):
        commands._check_fits(model, "resnet20", Splits, 10)
    assert commands._check_fits(create_model("resnet20", 10, 3), "resnet20", Splits, 10) == (3, 28, 28)


@needs_data
def test_checkpoint_for_three_channels_on_fashion_mnist(tmp_path, capsys, env):
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


@needs_data
def test_unreachable_flops_target(untrained, tmp_path, capsys, env):
    out, schedule = tmp_path / "out.pt", tmp_path / "schedule.json"
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--strategy", "inner", "--flops-reduction", "0.9",
                              "--bn-batches", "0", "--calibration-images", "128", "--out", out,
                              "--schedule-out", schedule, "--quiet"],
                     "0.9", "cannot be met", no_files=[out, schedule])
    assert list(tmp_path.iterdir()) == []


def test_errors_write_no_statistics_file(untrained, tmp_path, capsys):
    out = tmp_path / "stats.pt"
    assert_bad_input(capsys, ["stats", "--checkpoint", untrained, "--data-root", "/nonexistent", "--out", out],
                     "/nonexistent", no_files=[out])


def test_change_column_of_the_prune_summary():
    """Accuracies change by a difference; costs (latencies too, even below 1 ms) by a ratio."""
    assert commands._change(0.90, 0.85, difference=True) == "-0.0500"
    assert commands._change(0.8, 0.4) == "x0.500"  # a sub-millisecond latency is not an accuracy
    assert commands._change(1000, 250) == "x0.250"
    assert commands._change(None, 0.5, difference=True) == ""
