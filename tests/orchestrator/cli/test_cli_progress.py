"""Progress bars of ``prunesweep prune`` and ``eval``: every long stage draws one on stderr with
``--progress``, none without it (the captured stderr is not a terminal) or with ``--quiet``, and
stdout holds the result only."""
from __future__ import annotations

import json

import pytest

from cli_helpers import main_json, run_cli
from image_folders import write_image_folder

MODEL = ["--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 4}']
#: the bars of a prune run whose criterion runs the model (taylor) and whose ratios read
#: activation statistics (concentration), with reconstruction and BN recalibration
PRUNE_BARS = ("eval", "calibration images", "activation stats", "scoring", "reconstruction targets",
              "reconstruction", "BN recalibration", "latency")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained ``tiny_cnn`` checkpoint on a folder of 16-px PNGs (two classes, 8 calibration,
    8 training and 4 validation images)."""
    root = write_image_folder(tmp_path_factory.mktemp("images"), {"train": 8, "val": 2}, ("cat", "dog"), (16, 16))
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    main_json("train", *MODEL, "--dataset", "imagefolder", "--data-root", root, "--image-size", "16",
              "--epochs", "0", "--calibration-size", "8", "--out", out)
    return out


def prune(capsys, checkpoint, *flags: str) -> tuple[int, str, str]:
    return run_cli(capsys, "prune", "--checkpoint", checkpoint, "--criterion", "taylor", "--ratios", "concentration",
                   "--flops-reduction", "0.3", "--calibration-images", "8", "--batch-size", "4", "--bn-batches", "1",
                   "--json", *flags)


def bars_in(err: str) -> set[str]:
    """The stages whose bar was drawn: a description followed by ':' and a count or percentage."""
    return {stage for stage in PRUNE_BARS if f"{stage}: " in err}


def test_prune_shows_a_bar_for_every_stage_with_progress(capsys, checkpoint):
    code, out, err = prune(capsys, checkpoint, "--progress")
    assert code == 0, err
    assert bars_in(err) == set(PRUNE_BARS)
    assert out.count("\n") == 1 and json.loads(out)["pruned"]["macs"] > 0  # stdout holds the result only


@pytest.mark.parametrize("flags", [(), ("--quiet",)])
def test_prune_shows_no_bar_without_progress(capsys, checkpoint, flags):
    code, out, err = prune(capsys, checkpoint, *flags)
    assert code == 0, err
    assert bars_in(err) == set()


def test_eval_shows_the_latency_bar_with_progress(capsys, checkpoint):
    code, _, err = run_cli(capsys, "eval", "--checkpoint", checkpoint, "--json", "--progress")
    assert code == 0 and "eval: " in err and "latency: " in err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", checkpoint, "--json")
    assert code == 0 and "latency: " not in err
