"""Sweep configs whose baseline is ``model:`` + ``weights:`` (+ ``model_kwargs:``,
``dataset:``) instead of ``checkpoint:``: validated when read, resolved, round-tripped, and
prepared as a baseline (without Ray)."""
from __future__ import annotations

import pytest
import torch

from orchestrator.experiment import ConfigError, DataSettings, prepare_baseline
from orchestrator.sweeps import SweepConfig
from orchestrator.experiment.model_settings import ModelSettings, check_source_exists
from user_models import tiny_cnn

MODEL = {"model": "user_models:tiny_cnn", "weights": "w.pt", "model_kwargs": {"width": 4}}
SPACE = {"space": {"name": "uniform"}}


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_dict(data)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_model_config_is_resolved_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = SweepConfig.from_dict({**MODEL, **SPACE}, default_name="own")
    assert config.checkpoint is None
    assert config.model == ModelSettings("user_models:tiny_cnn", str(tmp_path / "w.pt"), {"width": 4}, "fashion-mnist")
    assert config.source is config.model
    resolved = config.to_dict()
    assert "checkpoint" not in resolved
    assert {k: resolved[k] for k in MODEL} == {**MODEL, "weights": str(tmp_path / "w.pt")}
    assert resolved["dataset"] == "fashion-mnist"
    assert SweepConfig.from_dict(resolved) == config  # what --resume reads back
    # the checkpoint form is unchanged
    plain = SweepConfig.from_dict({"checkpoint": "b.pt", **SPACE}).to_dict()
    assert plain["checkpoint"] == str(tmp_path / "b.pt") and not set(MODEL) & set(plain)


def test_model_without_weights_and_torchvision_names():
    config = SweepConfig.from_dict({"model": "torchvision:resnet18", "dataset": "cifar10", **SPACE})
    assert config.model.weights is None and config.model.dataset == "cifar10"


@pytest.mark.parametrize("data, start", [
    ({"checkpoint": "b.pt", **MODEL, **SPACE}, "model: give checkpoint or model (with weights), not both"),
    ({"checkpoint": "b.pt", "weights": "w.pt", **SPACE}, "weights: goes with model:"),
    ({"weights": "w.pt", **SPACE}, "weights: goes with model: name the model too"),
    (SPACE, "checkpoint: missing"),
    ({**MODEL, "model": "torchvision:resnet181", **SPACE}, "model: unknown torchvision model 'resnet181'; did you mean"),
    ({**MODEL, "model": "nomodule_xyz:f", **SPACE}, "model: model 'nomodule_xyz:f': cannot import"),
    ({**MODEL, "model_kwargs": {"depth": 2}, **SPACE}, "model_kwargs: model 'user_models:tiny_cnn' got unknown option"),
    ({**MODEL, "model_kwargs": [1], **SPACE}, "model_kwargs: must be a mapping"),
    ({**MODEL, "model": "", **SPACE}, "model: must be a non-empty string"),
    ({**MODEL, "weights": 3, **SPACE}, "weights: must be a non-empty string"),
    ({**MODEL, "dataset": "nope", **SPACE}, "dataset: must be one of"),
])
def test_bad_model_configs_name_their_key(data, start):
    message = refused(data)
    assert message.startswith(start), message


def test_missing_weights_file_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="weights: file .* does not exist"):
        check_source_exists(ModelSettings("user_models:tiny_cnn", weights=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match="checkpoint: file .* does not exist"):
        check_source_exists(str(tmp_path / "nope.pt"))
    check_source_exists(ModelSettings("user_models:tiny_cnn"))  # random initialisation: nothing to find


@pytest.mark.fashion_mnist
def test_prepare_baseline_from_a_model_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    torch.save(tiny_cnn(10, 1, width=4).state_dict(), tmp_path / "w.pt")
    settings = ModelSettings("user_models:tiny_cnn", weights=str(tmp_path / "w.pt"), kwargs={"width": 4})
    setup = prepare_baseline(settings, DataSettings(calibration_images=32, batch_size=16, test_subset=32))
    assert setup.spec.name == "user_models:tiny_cnn" and setup.spec.kwargs == {"width": 4}
    assert setup.spec.meta["weights"] == str(tmp_path / "w.pt")
    assert setup.shape == (1, 28, 28) and [g.name for g in setup.space.groups] == ["features.0", "features.3"]
    assert setup.data_config.name == "fashion-mnist" and setup.data_config.test_subset == 32
    assert sum(len(y) for _, y in setup.batches) == 32 and 0 <= setup.metrics["accuracy"] <= 1


@pytest.mark.fashion_mnist
def _own_model_sweep(tmp_path, name: str) -> SweepConfig:
    """A 2-trial sweep of ``user_models:tiny_cnn`` (width 8, seeded weights in ``tmp_path``)."""
    torch.manual_seed(0)
    torch.save(tiny_cnn(10, 1, width=8).state_dict(), tmp_path / "w.pt")
    return SweepConfig.from_dict({
        "model": "user_models:tiny_cnn", "weights": str(tmp_path / "w.pt"), "model_kwargs": {"width": 8},
        "name": name, "run_dir": str(tmp_path / name),
        "data": {"calibration_images": 32, "batch_size": 32, "test_subset": 64},
        "recipe": {"bn_batches": 1, "batch_size": 32},
        "space": {"name": "uniform", "criteria": ["l1"], "flops_reduction": [0.2, 0.5], "finetune_epochs": [0, 0]},
        "sweep": {"trials": 2, "concurrency": 2},
    })


def test_a_sweep_of_an_import_path_model_runs_on_ray_and_its_front_reloads(ray_session, tmp_path, monkeypatch):
    """The whole path for a model of one's own, built by import path in every Ray trial worker:
    ``user_models`` is importable here (tests/ is on this process's sys.path) but not on the Ray
    workers' own path; the sweep hands them the directory it imports from."""
    from orchestrator.sweeps import run_sweep
    from pruning.structure import load_checkpoint

    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    config = _own_model_sweep(tmp_path, "own-model")
    from orchestrator.experiment import Tracker

    result = run_sweep(config, progress=False)
    assert [t.status for t in result.trials] == ["FINISHED", "FINISHED"]
    assert result.front
    tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind="sweep")
    for row in result.front:
        path = tracker.client.download_artifacts(result.parent_run_id, f"pareto/checkpoints/{row['trial']}.pt")
        model, spec = load_checkpoint(path)
        assert spec.name == "user_models:tiny_cnn" and spec.kwargs == {"width": 8}
        assert model.features[0].out_channels < 8 or model.features[3].out_channels < 16  # pruned widths rebuilt


@pytest.mark.parametrize("verbose", [False, True])
def test_tune_prints_its_heading_and_info_lines_only_with_verbose(verbose, ray_session, tmp_path, monkeypatch, capfd):
    """The console of a sweep with progress: one line per trial; Tune's experiment heading and its
    INFO lines only with ``verbose`` (``prunesweep sweep --verbose``); stdout clean either way."""
    from orchestrator.sweeps import run_sweep
    from orchestrator.experiment.callback import ProgressLines

    monkeypatch.setenv("PRUNESWEEP_CACHE", str(tmp_path / "cache"))
    # as a study run earlier in this process leaves it: its one bar must not replace a sweep's lines
    monkeypatch.setattr(ProgressLines, "as_bar", True)
    run_sweep(_own_model_sweep(tmp_path, "console"), progress=True, verbose=verbose)
    out, err = capfd.readouterr()
    assert "Configuration for experiment" not in out
    assert sum(line.startswith("[screen] trial-") for line in err.splitlines()) == 2, err[-2000:]
    for tune_line in ("Configuration for experiment", "View detailed results here"):
        assert (tune_line in err) == verbose, err[-2000:]
    assert verbose or "Wrote the latest version" not in err, err[-2000:]
