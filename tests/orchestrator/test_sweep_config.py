"""Sweep config validation: every unknown key and out-of-range value is refused with its key path,
before anything runs; the resolved config round-trips; the example config is valid. No Ray, no
training: milliseconds."""
from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from orchestrator import cli
from orchestrator.experiment import ConfigError, flatten
from orchestrator.sweeps import SweepConfig, dump_sweep_config, load_sweep_config, make_sampler
from pruning.recovery import RecoveryRecipe

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "search_spaces" / "resnet20_fmnist.yaml"
BASE = {"checkpoint": "base.pt", "space": {"name": "concentration"}}


def config_with(**sections) -> dict:
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        data[key] = value
    return data


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- unknown keys, at every level --------------------------------------------------------------


@pytest.mark.parametrize("data, key", [
    ({**BASE, "sweeps": {}}, "sweeps: unknown key; valid: name, checkpoint, data, recipe, space, sweep, tracking, run_dir"),
    (config_with(sweep={"trails": 3}), "sweep.trails: unknown key; valid: trials, concurrency, sampler"),
    (config_with(data={"bn_batch": 2}), "data.bn_batch: unknown key; valid: calibration_images"),
    (config_with(recipe={"bogus": 1}), "recipe.bogus: unknown key; valid: reconstruct, ridge, reconstruct_rows, bn_batches"),
    # the keys that moved into the recipe, and the seed the sweep sets, are named with their place
    (config_with(data={"bn_batches": 2}), "data.bn_batches: set recipe.bn_batches instead"),
    (config_with(data={"finetune_subset": 64}), "data.finetune_subset: set recipe.finetune_subset instead"),
    (config_with(recipe={"seed": 3}), "recipe.seed: set sweep.seed instead"),
    (config_with(recipe={"temperature": 2.0}), "recipe.temperature: set distill_temperature instead"),
    (config_with(tracking={"url": "x"}), "tracking.url: unknown key; valid: uri, experiment"),
    (config_with(space={"name": "concentration", "beta": [0, 1]}), "space.beta: unknown key; valid: name, strategy, flops_reduction, alpha"),
    (config_with(space={"name": "uniform", "alpha": [0, 1]}), "space.alpha: unknown key"),
    (config_with(sweep={"objectives": {"flops": "min"}}), "sweep.objectives.flops: unknown key; valid: accuracy, macs, params, latency_ms"),
    (config_with(sweep={"refine": {"candidate": 2}}), "sweep.refine.candidate: unknown key; valid: candidates, recipe, targets, per_target"),
    (config_with(sweep={"refine": {"recipe": {"epochs": 1}}}), "sweep.refine.recipe.epochs: unknown key; valid: reconstruct"),
    (config_with(sweep={"refine": {"recipe": {"seed": 1}}}), "sweep.refine.recipe.seed: set sweep.seed instead"),
])
def test_unknown_keys_name_their_path(data, key):
    assert refused(data).startswith(key)


# --- out-of-range values -----------------------------------------------------------------------


@pytest.mark.parametrize("data, start", [
    (config_with(sweep={"trials": 0}), "sweep.trials: must be >= 1"),
    (config_with(sweep={"concurrency": -1}), "sweep.concurrency: must be >= 1"),
    (config_with(sweep={"concurrency": True}), "sweep.concurrency: must be an integer"),
    (config_with(sweep={"trials": 2.5}), "sweep.trials: must be an integer"),
    (config_with(sweep={"sampler": "cmaes"}), "sweep.sampler: must be one of nsga2, tpe, gp, random"),
    (config_with(sweep={"seed": -3}), "sweep.seed: must be >= 0"),
    (config_with(sweep={"cpus_per_trial": 0}), "sweep.cpus_per_trial: must be > 0"),
    (config_with(sweep={"objectives": {"accuracy": "min"}}), "sweep.objectives.accuracy: must be 'max'"),
    (config_with(sweep={"objectives": {"macs": "max"}}), "sweep.objectives.macs: must be 'min'"),
    (config_with(sweep={"objectives": {}}), "sweep.objectives: name at least one"),
    (config_with(sweep={"population_size": 1}), "sweep.population_size: must be >= 2"),
    (config_with(sweep={"sampler": "tpe", "population_size": 8}), "sweep.population_size: applies to sampler nsga2 only"),
    (config_with(sweep={"warm_start": "yes"}), "sweep.warm_start: must be true or false"),
    (config_with(sweep={"refine": {"candidates": -1}}), "sweep.refine.candidates: must be >= 0"),
    (config_with(sweep={"refine": [2]}), "sweep.refine: must be a mapping"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"distill": 1.5}}}), "sweep.refine.recipe.distill: must be in [0, 1]"),
    (config_with(data={"calibration_images": 0}), "data.calibration_images: must be >= 1"),
    (config_with(recipe={"bn_batches": -1}), "recipe.bn_batches: must be an integer >= 0"),
    (config_with(data={"batch_size": "big"}), "data.batch_size: must be an integer"),
    (config_with(recipe={"finetune_subset": 0}), "recipe.finetune_subset: must be an integer >= 1"),
    (config_with(recipe={"bn_data": "test"}), "recipe.bn_data: 'test' is unknown; valid: train, calibration"),
    (config_with(recipe={"reconstruct": "yes"}), "recipe.reconstruct: must be true or false"),
    (config_with(recipe={"distill": 2.0}), "recipe.distill: must be in [0, 1]"),
    (config_with(recipe={"steps": 0}), "recipe.steps: must be an integer >= 1, got 0"),
    (config_with(recipe={"steps": [1, 4]}), "recipe.steps: must be an integer >= 1, got [1, 4]"),  # a list: refine only
    (config_with(recipe={"step_order": "sideways"}), "recipe.step_order: 'sideways' is unknown; valid: together"),
    (config_with(recipe={"step_finetune_batches": -1}), "recipe.step_finetune_batches: must be an integer >= 0"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"steps": 0}}}), "sweep.refine.recipe.steps: must be an integer >= 1, got 0"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"steps": [1, "x"]}}}), "sweep.refine.recipe.steps: must be an integer >= 1, got 'x'"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"steps": []}}}), "sweep.refine.recipe.steps: must list distinct step counts"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"steps": [2, 2]}}}), "sweep.refine.recipe.steps: must list distinct step counts"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"step_order": "sideways"}}}), "sweep.refine.recipe.step_order: 'sideways' is unknown"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"finetune_epochs": [1, 2]}}}), "sweep.refine.recipe.finetune_epochs: only steps may be a list"),
    (config_with(sweep={"refine": {"candidates": 2, "recipe": {"ridge": [0.1]}}}), "sweep.refine.recipe.ridge: only steps may be a list"),
    (config_with(recipe=[1]), "recipe: must be a mapping"),
    (config_with(space={"name": "concentration", "alpha": [0.0, 2.0]}), "space.alpha: must lie within [0.0, 1.0]"),
    (config_with(space={"name": "uniform", "flops_reduction": [0.5, 1.5]}), "space.flops_reduction: must lie within"),
    (config_with(space={"name": "uniform", "criteria": ["l1", "nope"]}), "space.criteria: unknown criterion 'nope'"),
    (config_with(space={"name": "uniform", "finetune_epochs": [2, 1]}), "space.finetune_epochs: must be (low, high)"),
    (config_with(space={"name": "snpfi", "strategy": "half"}), "space.strategy: must be one of full, inner"),
    (config_with(space={"name": "uniform", "round_to": [8]}), "space.round_to: must list at least two values"),
    (config_with(space={"name": "uniform", "round_to": [1, 1]}), "space.round_to: must not repeat a value"),
    (config_with(space={"name": "nope"}), "space.name: must be one of "),  # the registered spaces (tests add some)
    (config_with(space={"strategy": "full"}), "space.name: missing"),
    (config_with(space=["uniform"]), "space: must be a mapping"),
    (config_with(tracking={"uri": "./mlruns"}), "tracking.uri: MLflow 3 does not support the file store"),
    (config_with(tracking={"uri": "file:///tmp/mlruns"}), "tracking.uri: MLflow 3 does not support the file store"),
    (config_with(tracking={"experiment": ""}), "tracking.experiment: must be a non-empty string"),
    (config_with(name="bad name!"), "name: must be letters, digits"),
    ({"space": {"name": "uniform"}}, "checkpoint: missing"),
    ({"checkpoint": "x.pt"}, "space: missing"),
])
def test_out_of_range_values_name_their_key(data, start):
    message = refused(data)
    assert message.startswith(start), message


# --- resolution --------------------------------------------------------------------------------


def test_defaults_are_resolved_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = SweepConfig.from_dict({"checkpoint": "ck/base.pt", "space": {"name": "uniform"}}, default_name="mine")
    assert config.name == "mine"
    assert config.checkpoint == str(tmp_path / "ck" / "base.pt")
    assert config.run_dir == str(tmp_path / "runs" / "sweeps" / "mine")
    assert config.tracking_uri == f"sqlite:///{tmp_path}/runs/sweeps/mine/mlflow.db"
    assert config.tracking_uri.startswith("sqlite:////")  # absolute: Tune changes trial working dirs
    resolved = config.to_dict()
    assert resolved["sweep"] == {"trials": 8, "concurrency": 2, "sampler": "nsga2",
                                 "objectives": {"accuracy": "max", "macs": "min"}, "seed": 0,
                                 "cpus_per_trial": 1, "population_size": 4, "warm_start": True,
                                 "refine": {"candidates": 0, "recipe": {"finetune_epochs": 1, "distill": 0.5},
                                            "targets": [], "per_target": 1, "concurrency": None}}
    assert not config.two_stage
    assert resolved["data"] == {"calibration_images": 512, "batch_size": 128, "data_root": None, "test_subset": None}
    # the recipe defaults to RecoveryRecipe(): reconstruction on; its seed is the sweep's
    defaults = RecoveryRecipe().to_dict()
    assert resolved["recipe"] == {k: v for k, v in defaults.items() if k != "seed"}
    assert resolved["recipe"]["reconstruct"] is True
    assert config.recipe == RecoveryRecipe(seed=config.sweep.seed)
    # the space's own defaults are listed too
    assert resolved["space"]["flops_reduction"] == [0.2, 0.8]
    assert resolved["space"]["criteria"] == ["l1"]
    assert resolved["space"]["strategy"] == "full"
    # YAML round trip gives the same config, from any directory
    text = dump_sweep_config(config)
    monkeypatch.chdir(REPO)
    assert SweepConfig.from_dict(yaml.safe_load(text)) == config
    flat = flatten(resolved)
    assert flat["sweep.objectives.accuracy"] == "max" and flat["space.name"] == "uniform"
    assert flat["recipe.reconstruct"] is True and flat["recipe.bn_batches"] == 20


def test_a_searched_round_to_resolves_to_its_list_and_reaches_as_far_as_its_best_choice(tiny_resnet, example_input):
    from orchestrator.sweeps.sweep import check_reachable
    from pruning.structure import PruningSpace

    # TinyResNet at multiples of 8 loses at most 28 % of its MACs, at any width 98 %
    pruning_space = PruningSpace.build(tiny_resnet, example_input)
    space = {"name": "uniform", "flops_reduction": [0.5, 0.6]}
    searched = SweepConfig.from_dict(config_with(space={**space, "round_to": [8, 1]}))
    assert searched.to_dict()["space"]["round_to"] == [8, 1]
    check_reachable(searched, searched.space.create(), pruning_space)
    for round_to in (8, [8, 16]):
        config = SweepConfig.from_dict(config_with(space={**space, "round_to": round_to}))
        with pytest.raises(ConfigError, match="space.flops_reduction: starts at 0.5 but this model can lose at most"):
            check_reachable(config, config.space.create(), pruning_space)


def test_recipe_section_sets_the_recipe_and_sweep_seed_seeds_it():
    config = SweepConfig.from_dict(config_with(recipe={"reconstruct": False, "bn_batches": 2, "finetune_subset": 64},
                                               sweep={"seed": 7}))
    assert config.recipe == RecoveryRecipe(reconstruct=False, bn_batches=2, finetune_subset=64, seed=7)
    assert config.recipe.stages == ("pruned", "bn_recalibrated")
    assert SweepConfig.from_dict(yaml.safe_load(dump_sweep_config(config))) == config


def test_refine_section_gives_the_two_stage_recipes():
    config = SweepConfig.from_dict(config_with(recipe={"finetune_epochs": 2, "finetune_subset": 64},
                                               sweep={"seed": 3, "refine": {"candidates": 3, "recipe": {"finetune_lr": 0.02}}}))
    assert config.two_stage and config.sweep.refine.candidates == 3
    # screening never fine-tunes; refinement = the recipe + the overrides (defaults: 1 epoch, distill 0.5)
    assert config.screen_recipe == RecoveryRecipe(finetune_epochs=0, finetune_subset=64, seed=3)
    assert config.refine_recipe == RecoveryRecipe(finetune_epochs=1, distill=0.5, finetune_lr=0.02,
                                                  finetune_subset=64, seed=3)
    assert config.to_dict()["sweep"]["refine"] == {
        "candidates": 3, "recipe": {"finetune_epochs": 1, "distill": 0.5, "finetune_lr": 0.02}, "targets": [], "per_target": 1,
        "concurrency": None}
    assert SweepConfig.from_dict(yaml.safe_load(dump_sweep_config(config))) == config
    assert flatten(config.to_dict())["sweep.refine.candidates"] == 3
    off = SweepConfig.from_dict(config_with(sweep={"refine": None, "warm_start": False}))
    assert not off.two_stage and not off.sweep.warm_start


def test_refine_steps_may_be_a_list_that_the_resolved_config_records():
    config = SweepConfig.from_dict(config_with(
        recipe={"steps": 2, "step_order": "from_input"},
        sweep={"refine": {"candidates": 2, "recipe": {"steps": [1, 4], "step_finetune_batches": 3}}}))
    assert config.recipe.steps == 2 and config.screen_recipe.steps == 2  # screening: the recipe's steps
    assert config.sweep.refine.listed_steps == (1, 4)
    # the refinement recipe holds the first listed count; each refined trial sets its own
    assert config.refine_recipe == RecoveryRecipe(steps=1, step_order="from_input", step_finetune_batches=3,
                                                  finetune_epochs=1, distill=0.5)
    assert config.to_dict()["sweep"]["refine"]["recipe"]["steps"] == [1, 4]
    assert SweepConfig.from_dict(yaml.safe_load(dump_sweep_config(config))) == config
    single = SweepConfig.from_dict(config_with(sweep={"refine": {"candidates": 2, "recipe": {"steps": 4}}}))
    assert single.sweep.refine.listed_steps is None and single.refine_recipe.steps == 4


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = SweepConfig.from_dict(config_with(tracking={"uri": "sqlite:///db/m.db"}))
    assert config.tracking_uri == f"sqlite:///{tmp_path}/db/m.db"
    server = SweepConfig.from_dict(config_with(tracking={"uri": "http://localhost:5000"}))
    assert server.tracking_uri == "http://localhost:5000"


def test_example_config_is_valid_and_complete():
    config = load_sweep_config(EXAMPLE)
    assert config.space.name == "concentration"
    assert list(config.space.options["criteria"]) == ["l1", "entropy", "taylor"]
    raw = yaml.safe_load(EXAMPLE.read_text())
    # the example spells out every key of every section
    resolved = config.to_dict()
    for section in ("data", "recipe", "sweep", "tracking"):
        assert set(raw[section]) == set(resolved[section]), section
    assert set(raw["space"]) == set(resolved["space"])


def test_overrides_use_dotted_keys(tmp_path):
    path = tmp_path / "my-sweep.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_sweep_config(path, {"sweep.trials": 3, "run_dir": str(tmp_path / "r"), "sweep.concurrency": None})
    assert config.name == "my-sweep" and config.sweep.trials == 3 and config.sweep.concurrency == 2
    assert config.run_dir == str(tmp_path / "r")
    assert config.tracking_uri == f"sqlite:///{tmp_path}/r/mlflow.db"
    with pytest.raises(ConfigError, match=r"^sweep.trials: must be >= 1"):
        load_sweep_config(path, {"sweep.trials": 0})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="^config: file .* does not exist"):
        load_sweep_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: [unclosed\n")
    with pytest.raises(ConfigError, match="^config: .* is not valid YAML"):
        load_sweep_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_sweep_config(scalar)


# --- the CLI refuses before anything runs ------------------------------------------------------


def test_cli_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "run_dir": str(run_dir), "sweep": {"trails": 4}}))
    assert cli.main(["sweep", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: sweep.trails: unknown key; valid: trials, concurrency")
    assert not run_dir.exists()
    # a missing checkpoint is refused before Ray or MLflow start
    path.write_text(yaml.safe_dump({**BASE, "checkpoint": str(tmp_path / "nope.pt"), "run_dir": str(run_dir)}))
    assert cli.main(["sweep", "--config", str(path), "--trials", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint: file ")
    assert not run_dir.exists()
    # --trials override validated like the file
    assert cli.main(["sweep", "--config", str(path), "--trials", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: sweep.trials: must be >= 1")
    # resume of a folder without a sweep
    assert cli.main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "holds no sweep to resume" in capsys.readouterr().err
    assert cli.main(["sweep", "--resume", str(tmp_path), "--trials", "3"]) == 2
    assert "drop --trials" in capsys.readouterr().err
    assert cli.main(["sweep"]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("name, cls", [("nsga2", "NSGAIISampler"), ("tpe", "TPESampler"), ("gp", "GPSampler"),
                                       ("random", "RandomSampler")])
def test_samplers(name, cls):
    sampler = make_sampler(name, seed=3, population_size=4)
    assert type(sampler).__name__ == cls
    assert isinstance(sampler, optuna.samplers.BaseSampler)


def test_nsga2_breeds_from_sampled_trials_and_evaluates_the_warm_starts_beside_them():
    # the measured choice (docs/sweeps.md "Warm starts"): enqueued trials are in no generation,
    # so the first generation is random and covers the whole range; breeding from the warm
    # starts instead lowered the front's hypervolume on ResNet-20 and VGG-16
    sampler = make_sampler("nsga2", seed=0, population_size=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    warm = [{"x": x, "y": x} for x in (0.1, 0.2, 0.3, 0.4)]
    for point in warm:
        study.enqueue_trial(point)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=12)
    assert [t.params for t in study.trials[:4]] == warm
    assert sampler.get_population(study, 0) == study.trials[4:8]
    assert all(t.number >= 4 for t in sampler.get_parent_population(study, 1))


# --- the latency objective's deployment target ---------------------------------------------------


def test_latency_objective_resolves_its_target_and_only_it_takes_one():
    config = SweepConfig.from_dict(config_with(sweep={"objectives": {"accuracy": "max", "latency_ms": "min"}}))
    resolved = config.to_dict()["sweep"]["latency"]
    assert resolved == {"runtime": "onnxruntime", "device": "cpu", "batch": 1, "threads": 1, "warmup": 3,
                        "repeats": 20, "table_points": 8}
    assert SweepConfig.from_dict(yaml.safe_load(dump_sweep_config(config))) == config
    # runtime, device, batch, threads and repeats are MLflow params of the parent run
    flat = flatten(config.to_dict())
    assert {flat[f"sweep.latency.{k}"] for k in ("runtime", "device", "batch", "threads", "repeats")} == {
        "onnxruntime", "cpu", 1, 20}
    # without the objective the resolved config has no latency section
    assert "latency" not in SweepConfig.from_dict(BASE).to_dict()["sweep"]


@pytest.mark.parametrize("latency, start", [
    ({"runtime": "tvm"}, "sweep.latency.runtime: must be one of onnxruntime, tensorrt, torch"),
    ({"device": "tpu"}, "sweep.latency.device: must be one of cpu, cuda"),
    ({"batch": 0}, "sweep.latency.batch: must be >= 1"),
    ({"threads": 1.5}, "sweep.latency.threads: must be an integer"),
    ({"table_points": 1}, "sweep.latency.table_points: must be >= 2"),
    ({"runtim": "torch"}, "sweep.latency.runtim: unknown key; valid: runtime, device, batch"),
])
def test_bad_latency_targets_name_their_key(latency, start):
    objectives = {"accuracy": "max", "latency_ms": "min"}
    assert refused(config_with(sweep={"objectives": objectives, "latency": latency})).startswith(start)


def test_a_latency_target_without_the_objective_is_refused():
    message = refused(config_with(sweep={"latency": {"runtime": "torch"}}))
    assert message.startswith("sweep.latency: applies to the latency_ms objective only")


@pytest.mark.parametrize("latency, reason", [
    ({"runtime": "tensorrt"}, "tensorrt does not run on cpu; valid: cuda"),
    ({"runtime": "onnxruntime", "device": "cuda"}, "needs onnxruntime's CUDAExecutionProvider"),
])
def test_cli_a_runtime_missing_here_is_one_line_before_anything_runs(tmp_path, capsys, latency, reason):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime's CUDA provider")
    run_dir = tmp_path / "run"
    path = tmp_path / "latency.yaml"
    sweep = {"objectives": {"accuracy": "max", "latency_ms": "min"}, "latency": latency}
    path.write_text(yaml.safe_dump({**BASE, "checkpoint": str(tmp_path / "nope.pt"), "run_dir": str(run_dir),
                                    "sweep": sweep}))
    assert cli.main(["sweep", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [err.strip()]
    assert err.startswith(f"error: sweep.latency.runtime: latency runtime {latency['runtime']} on "
                          f"{latency.get('device', 'cpu')} is not available: ")
    assert reason in err
    assert not run_dir.exists()
