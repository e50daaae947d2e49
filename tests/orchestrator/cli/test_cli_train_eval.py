"""`prunesweep train`, `eval` and `stats` on the session's trained ResNet-20 (real Fashion-MNIST)."""
from __future__ import annotations

import pytest
import torch

from cli_helpers import run_json
from orchestrator.cli import main
from pruning.structure import load_checkpoint

pytestmark = pytest.mark.fashion_mnist


def test_train_json_fields_and_checkpoint(trained_resnet20, capsys):
    data, path = trained_resnet20["data"], trained_resnet20["out"]
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
    # where and how it was timed, in the JSON and as a line of the text
    timing = evaluated["latency"]
    assert {k: timing[k] for k in ("runtime", "device", "batches", "threads")} == {
        "runtime": "torch", "device": "cpu", "batches": [1, 64], "threads": torch.get_num_threads()}
    assert timing["repeats"] >= 1 and timing["warmup"] >= 0
    main(["eval", "--checkpoint", str(path), "--quiet"])
    assert (f"latency: torch on cpu, batch 1 and 64, {torch.get_num_threads()} thread(s), median of "
            f"{timing['repeats']} runs") in capsys.readouterr().out


def test_stats_json_and_file(trained_resnet20, tmp_path, capsys):
    stats_file = tmp_path / "stats" / "act.pt"  # its folder does not exist yet, as for train/prune --out
    data = run_json(capsys, "stats", "--checkpoint", trained_resnet20["out"], "--calibration-images", "128",
                    "--out", stats_file)
    assert data["images"] == 128 and data["layers"] > 0 and data["out"] == str(stats_file)
    assert data["workers"] == 0 and data["ray_network"] is None  # in-process: no Ray at all
    assert stats_file.is_file()
    assert [p.name for p in stats_file.parent.iterdir()] == ["act.pt"]
