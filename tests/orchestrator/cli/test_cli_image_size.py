"""``--image-size`` on a tiny image folder: it reaches the loader, the checkpoint records it and
``eval`` / ``prune`` reuse it without the flag; a size that disagrees with the checkpoint wins
with a warning; bad values and other datasets are one-line errors. Progress bars go to stderr
only on a terminal or with ``--progress``."""
from __future__ import annotations

import json

import pytest

from cli_helpers import assert_bad_input, main_json, run_cli, run_json
from image_folders import write_image_folder
from orchestrator.cli.common import load_fitting
from orchestrator.cli.main import build_parser
from pruning.structure import load_checkpoint, measure_cost

#: a tiny model of one's own (adaptive pooling: it runs at any image size)
MODEL = ["--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 4}']


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 40 x 30 PNGs: 6 training and 2 validation images each."""
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 6, "val": 2}, ("cat", "dog"), (30, 40))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """``train --image-size 16`` on the folder: the JSON result and the checkpoint path."""
    out = tmp_path_factory.mktemp("trained") / "tiny.pt"
    data = main_json("train", *MODEL, "--dataset", "imagefolder", "--data-root", folder, "--image-size", "16",
                     "--epochs", "1", "--batch-size", "4", "--calibration-size", "4", "--out", out)
    return {"data": data, "out": out}


def parsed(*argv) -> object:
    return build_parser().parse_args([str(a) for a in argv])


def test_image_size_reaches_the_loader(trained):
    loaded = load_fitting(parsed("prune", "--checkpoint", trained["out"], "--image-size", "12"))
    assert loaded.shape == (3, 12, 12) and loaded.data.image_size == 12
    for split in (loaded.splits.train, loaded.splits.calibration, loaded.splits.test):
        image, _ = split[0]
        assert image.shape == (3, 12, 12)


def test_train_records_the_size_and_eval_reuses_it(trained, capsys):
    model, spec = load_checkpoint(trained["out"])
    assert tuple(spec.input_shape) == (3, 16, 16)
    assert spec.meta["data"]["name"] == "imagefolder" and spec.meta["data"]["image_size"] == 16

    loaded = load_fitting(parsed("eval", "--checkpoint", trained["out"]), prunable=False)
    assert loaded.shape == (3, 16, 16) and loaded.splits.test[0][0].shape == (3, 16, 16)
    evaluated = run_json(capsys, "eval", "--checkpoint", trained["out"])
    assert evaluated["macs"] == measure_cost(model, (3, 16, 16)).macs
    assert evaluated["accuracy"] == pytest.approx(trained["data"]["test_accuracy"])


def test_a_size_other_than_the_checkpoints_wins_with_a_warning(trained, capsys):
    model, _ = load_checkpoint(trained["out"])
    code, out, err = run_cli(capsys, "eval", "--checkpoint", trained["out"], "--image-size", "24", "--json", "--quiet")
    assert code == 0
    assert "warning: --image-size 24 overrides the checkpoint's 16x16 input: running at 24x24" in err
    assert json.loads(out)["macs"] == measure_cost(model, (3, 24, 24)).macs
    # the size the checkpoint records raises no warning
    code, _, err = run_cli(capsys, "eval", "--checkpoint", trained["out"], "--image-size", "16", "--json", "--quiet")
    assert code == 0 and "warning" not in err


def test_prune_at_another_size_records_it_for_eval(trained, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(capsys, "prune", "--checkpoint", trained["out"], "--image-size", "20", "--ratio", "0.25",
                           "--calibration-images", "4", "--batch-size", "4", "--bn-batches", "1", "--out", out,
                           "--json", "--quiet")
    assert code == 0, err
    pruned, spec = load_checkpoint(out)
    assert tuple(spec.input_shape) == (3, 20, 20) and spec.meta["data"]["image_size"] == 20
    assert "pruning" in spec.meta
    evaluated = run_json(capsys, "eval", "--checkpoint", out)
    assert evaluated["macs"] == measure_cost(pruned, (3, 20, 20)).macs


def test_stats_reads_the_checkpoints_size(trained, tmp_path, capsys):
    data = run_json(capsys, "stats", "--checkpoint", trained["out"], "--calibration-images", "4",
                    "--out", tmp_path / "act.pt")
    assert data["images"] == 4 and data["layers"] > 0


def test_bad_image_sizes_are_one_line_errors(untrained, folder, tmp_path, capsys):
    assert_bad_input(capsys, ["eval", "--checkpoint", untrained, "--image-size", "32"],
                     "--image-size applies only to imagefolder, not 'fashion-mnist'", "--dataset imagefolder")
    assert_bad_input(capsys, ["train", "--image-size", "32", "--out", tmp_path / "x.pt"],
                     "--image-size applies only to imagefolder", no_files=[tmp_path / "x.pt"])
    assert_bad_input(capsys, ["train", *MODEL, "--dataset", "imagefolder", "--data-root", folder,
                              "--image-size", "0", "--out", tmp_path / "x.pt"],
                     "--image-size must be >= 1, got 0", no_files=[tmp_path / "x.pt"])


def test_progress_bars_only_on_a_terminal_or_with_progress(trained, capsys):
    code, out, err = run_cli(capsys, "eval", "--checkpoint", trained["out"], "--json")
    assert code == 0 and "eval" not in err  # captured stderr is not a terminal: no bar
    code, out, err = run_cli(capsys, "eval", "--checkpoint", trained["out"], "--json", "--progress")
    assert code == 0 and "eval: " in err
    assert out.count("\n") == 1 and json.loads(out)["macs"] > 0  # stdout holds the result only


def test_compare_flags_set_the_studys_image_size(capsys, tmp_path):
    from orchestrator.cli.compare import _flag_study
    from orchestrator.studies import StudyConfig

    argv = ["compare", *MODEL, "--dataset", "imagefolder", "--criteria", "l1", "--flops-reductions", "0.5",
            "--run-dir", tmp_path]
    config = StudyConfig.from_dict(_flag_study(parsed(*argv, "--image-size", "32")))
    assert config.data.image_size == 32
    assert_bad_input(capsys, [*argv, "--dataset", "cifar10", "--image-size", "32"],
                     "data.image_size: applies only to dataset imagefolder, not 'cifar10'")
    assert_bad_input(capsys, ["compare", "--config", "study.yaml", "--image-size", "32"], "drop them", "--image-size")
