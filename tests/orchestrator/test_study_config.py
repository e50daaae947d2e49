"""Study configs: the example file is valid and lists every key; unknown keys and bad values
are refused with their path; the resolved config round-trips; the grid and its shared score
keys; the statistics on hand-built tables give the known values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.studies import StudyConfig, load_study_config, score_keys, study_cells
from orchestrator.studies.report import long_rows, study_tables
from orchestrator.studies.significance import average_ranks, critical_difference, mean_interval, paired_comparison
from orchestrator.experiment import ConfigError, TrialRecord
from pruning.recovery import RecoveryRecipe

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "studies" / "criteria_benchmark.yaml"
MINIMAL = {"checkpoints": ["a.pt"], "criteria": ["random", "l1"], "flops_reductions": [0.5]}


def test_example_study_is_valid_and_lists_every_key(tmp_path):
    config = load_study_config(EXAMPLE, {"run_dir": str(tmp_path)})
    raw = yaml.safe_load(EXAMPLE.read_text())
    resolved = config.to_dict()
    assert set(raw) == set(resolved)
    for section in ("pruning", "data", "significance", "execution", "tracking"):
        assert set(raw[section]) == set(resolved[section]), section
    assert set(raw["recipes"]["bn"]) == set(resolved["recipes"]["bn"])  # a recipe with every key
    assert len(config.criteria) == 13 and [r.label for r in config.ratios] == ["uniform", "concentration"]
    assert len(study_cells(config)) == 3 * 13 * 2 * 2 * 3 * 3
    assert len(score_keys(config)) == 3 * 13 * 3  # what the 1404 cells share


def test_defaults_resolve_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = StudyConfig.from_dict(MINIMAL)
    assert config.run_dir == str(tmp_path / "runs" / "studies" / "study")
    assert config.tracking_uri == f"sqlite:///{tmp_path}/runs/studies/study/mlflow.db"
    assert config.checkpoints[0].checkpoint == str(tmp_path / "a.pt") and config.checkpoints[0].label == "a"
    assert config.recipes == {"default": RecoveryRecipe()} and [r.label for r in config.ratios] == ["uniform"]
    assert config.seeds == (0,) and config.reference == "random"
    assert "seed" not in config.to_dict()["recipes"]["default"]  # each cell's seed is its recipe's
    assert StudyConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_the_reference_recipe_round_trips_and_defaults_to_none(tmp_path):
    plain = StudyConfig.from_dict({**MINIMAL, "run_dir": str(tmp_path)})
    assert plain.reference_recipe is None and plain.to_dict()["significance"]["reference_recipe"] is None
    recipes = {"oneshot": {}, "stepped": {"steps": 4}}
    config = StudyConfig.from_dict({**MINIMAL, "run_dir": str(tmp_path), "recipes": recipes,
                                    "significance": {"reference_recipe": "oneshot"}})
    assert config.reference_recipe == "oneshot" and config.to_dict()["significance"]["reference_recipe"] == "oneshot"
    assert StudyConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
    single = StudyConfig.from_dict({**MINIMAL, "run_dir": str(tmp_path), "recipes": {"oneshot": {}},
                                    "significance": {"reference_recipe": "oneshot"}})
    assert single.reference_recipe is None  # one recipe: nothing to pair with it


def test_checkpoints_may_be_models_with_weights(tmp_path):
    config = StudyConfig.from_dict({**MINIMAL, "checkpoints": [
        {"model": "user_models:tiny_cnn", "weights": str(tmp_path / "w.pt"), "model_kwargs": {"width": 4}},
        {"label": "b", "checkpoint": "b.pt"}]})
    first, second = config.checkpoints
    assert first.label == "w" and first.model.kwargs == {"width": 4} and second.source.endswith("b.pt")


@pytest.mark.parametrize("change, start", [
    ({"criterias": []}, "criterias: unknown key; valid: name, checkpoints"),
    ({"criteria": ["random", {"name": "shapley", "max_permutatons": 8}]},
     "criteria[1].max_permutatons: unknown key; valid: max_permutations"),
    ({"criteria": ["random", {"name": "shapley", "max_permutations": 0}]}, "criteria[1]: max_permutations"),
    ({"criteria": ["random", "zz"]}, "criteria[1].name: must be one of"),
    ({"criteria": ["random", "l1", "l1"]}, "criteria: labels must be unique, l1 repeats"),
    ({"ratios": [{"name": "concentration", "tau": 0.9}]}, "ratios[0].tau: unknown key; valid: alpha"),
    ({"ratios": [{"name": "concentration", "alpha": 2}]}, "ratios[0].alpha: must be in [0, 1]"),
    ({"ratios": [{"name": "concentration", "fusion": "mean"}]}, "ratios[0].fusion: must be one of minmax, rank"),
    ({"ratios": [{"name": "schedule", "path": "nope.json"}]}, "ratios[0].path: file"),
    ({"recipes": {"bn": {"bn_batchs": 2}}}, "recipes.bn.bn_batchs: unknown key"),
    ({"recipes": {"bn": {"seed": 2}}}, "recipes.bn.seed: set seeds instead"),
    ({"flops_reductions": [0.5, 1.0]}, "flops_reductions: each must be in (0, 1)"),
    ({"seeds": [1, 1]}, "seeds: must not repeat a value"),
    ({"significance": {"reference": "l2"}}, "significance.reference: must be one of the criteria random, l1"),
    ({"recipes": {"a": {}, "b": {}}, "significance": {"reference_recipe": "x"}},
     "significance.reference_recipe: must be one of the recipes a, b, got 'x'"),
    ({"significance": {"interval": "z"}}, "significance.interval: must be one of t, bootstrap"),
    ({"statistics": {"reference": "random"}}, "statistics: is now called significance"),
    ({"execution": {"gpus_per_trial": -1}}, "execution.gpus_per_trial: must be >= 0"),
    ({"execution": {"score_every_stage": "yes"}}, "execution.score_every_stage: must be true or false"),
    ({"pruning": {"strategy": "half"}}, "pruning.strategy: must be one of full, inner"),
    ({"checkpoints": [{"checkpoint": "a.pt", "weights": "w.pt"}]}, "checkpoints[0].weights: goes with model:"),
    ({"checkpoints": []}, "checkpoints: must be a non-empty list"),
])
def test_bad_values_name_their_key(change, start):
    with pytest.raises(ConfigError) as info:
        StudyConfig.from_dict({**MINIMAL, **change})
    assert str(info.value).startswith(start), str(info.value)


def test_cells_share_scores_per_checkpoint_criterion_and_seed():
    config = StudyConfig.from_dict({**MINIMAL, "checkpoints": ["a.pt", "b.pt"], "flops_reductions": [0.3, 0.5],
                                    "seeds": [0, 1], "recipes": {"bn": {}, "rec": {}},
                                    "ratios": ["uniform", {"name": "snpfi", "tau": 0.9}]})
    cells = study_cells(config)
    assert len(cells) == 2 * 2 * 2 * 2 * 2 * 2 and len({c.id for c in cells}) == len(cells)
    keys = score_keys(config)
    assert {c.score_key for c in cells} | {c.prior_key for c in cells if c.ratios == "snpfi"} == set(keys)
    assert len(keys) == 2 * (2 + 1) * 2  # the criteria and the SNPFI prior, per checkpoint and seed


# --- statistics --------------------------------------------------------------------------------


def test_paired_wilcoxon_on_a_hand_built_table_gives_the_exact_p_value():
    # six pairs, every difference positive and distinct: exact two-sided p = 2 / 2**6
    result = paired_comparison([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert result.p_value == pytest.approx(0.03125) and result.mean == pytest.approx(0.035)
    # one negative difference of rank 1: W- = 1, two-sided p = 2 * 2 / 64
    assert paired_comparison([-0.01, 0.02, 0.03, 0.04, 0.05, 0.06]).p_value == pytest.approx(0.0625)
    assert paired_comparison([0.0, 0.0, 0.0]).p_value == 1.0
    bootstrap = paired_comparison([0.01, 0.02, 0.03, 0.04, 0.05, 0.06], test="bootstrap", samples=2000)
    assert bootstrap.p_value < 0.01 and bootstrap.low > 0


def test_t_interval_and_bootstrap_interval():
    t = mean_interval([0.5, 0.7, 0.6])
    assert t.mean == pytest.approx(0.6) and t.high - t.mean == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    boot = mean_interval([0.5, 0.7, 0.6], method="bootstrap", samples=5000)
    assert 0.5 <= boot.low < 0.6 < boot.high <= 0.7
    assert mean_interval([0.4]).low is None and mean_interval([]).mean is None


def test_average_ranks_friedman_and_the_nemenyi_critical_difference():
    blocks = [{"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.9, "b": 0.7, "c": 0.8}, {"a": 0.8, "b": 0.8, "c": 0.5},
              {"a": 0.9}]  # the last is incomplete: left out
    ranks = average_ranks(blocks, ["a", "b", "c"])
    assert ranks.blocks == 3 and ranks.average == pytest.approx({"a": 3.5 / 3, "b": 6.5 / 3, "c": 8 / 3})  # ties share 1.5
    assert 0 < ranks.friedman_p < 1
    # Demsar (2006), table 5: q_0.05 = 2.343 (k = 3), 2.569 (k = 4)
    assert critical_difference(3, 3) == pytest.approx(2.343 * (3 * 4 / 18) ** 0.5, rel=1e-3)
    assert critical_difference(4, 10) == pytest.approx(2.569 * (4 * 5 / 60) ** 0.5, rel=1e-3)


def test_tables_of_a_hand_built_long_table():
    config = StudyConfig.from_dict({**MINIMAL, "seeds": [0, 1, 2]})
    records = []
    for criterion, accuracies in (("random", (0.5, 0.6, 0.4)), ("l1", (0.7, 0.8, 0.75))):
        for seed, accuracy in enumerate(accuracies):
            params = {"checkpoint": "a", "criterion": criterion, "ratios": "uniform", "recipe": "default",
                      "flops_reduction": "0.5", "seed": str(seed)}
            records.append(TrialRecord(f"{criterion}{seed}", "t", "FINISHED", params,
                                       {"test_accuracy": accuracy, "macs_reduction": 0.5}))
    records.append(TrialRecord("x", "t", "FAILED", {**params, "seed": "9"}, error="boom"))
    tables = study_tables(long_rows(records), config.significance, config.reference)
    summary = {(r["criterion"]): r for r in tables.summary}
    assert summary["l1"]["n"] == 3 and summary["l1"]["failed"] == 1
    assert summary["random"]["test_accuracy_mean"] == pytest.approx(0.5)
    (paired,) = tables.paired
    assert paired["pairs"] == 3 and paired["mean_difference"] == pytest.approx(0.25)
    assert paired["p_value"] == pytest.approx(0.25)  # n = 3, all positive: exact 2 / 2**3
    assert [r["criterion"] for r in tables.ranks] == ["l1", "random"]
    assert "| l1 | random | 3 |" in tables.markdown().replace("default | uniform | ", "")


def test_accuracy_plot_has_a_panel_per_recipe_and_ratio_source(tmp_path):
    from matplotlib.image import imread

    from orchestrator.studies.plots import plot_accuracy

    config = StudyConfig.from_dict({**MINIMAL, "seeds": [0, 1]})
    records = [TrialRecord(f"{criterion}{ratios}{recipe}{seed}", "t", "FINISHED",
                           {"checkpoint": "a", "criterion": criterion, "ratios": ratios, "recipe": recipe,
                            "flops_reduction": "0.5", "seed": str(seed)},
                           {"test_accuracy": 0.5 + 0.1 * seed, "macs_reduction": 0.5})
               for criterion in ("random", "l1") for ratios in ("uniform", "concentration")
               for recipe in ("bn", "reconstruct") for seed in (0, 1)]
    tables = study_tables(long_rows(records), config.significance, config.reference)
    one = plot_accuracy(tables, 0.9, tmp_path / "one.png")
    uniform_only = study_tables(long_rows([r for r in records if r.params["ratios"] == "uniform"]),
                                config.significance, config.reference)
    single = plot_accuracy(uniform_only, 0.9, tmp_path / "single.png")
    (h2, w2, _), (h1, w1, _) = imread(one).shape, imread(single).shape
    assert w2 == w1 and h2 > 1.8 * h1  # a second ratio source is a second row of panels, same columns


def test_accuracy_plot_draws_every_criterions_interval_beyond_the_banded_few(tmp_path):
    from dataclasses import replace as replace_fields

    from matplotlib.image import imread

    from orchestrator.studies.plots import MAX_BANDS, plot_accuracy

    names = ["random", *(f"c{i}" for i in range(MAX_BANDS + 1))]  # labels: the tables need no registry name
    config = StudyConfig.from_dict({**MINIMAL, "seeds": [0, 1]})
    records = [TrialRecord(f"{criterion}{target}{seed}", "t", "FINISHED",
                           {"checkpoint": "a", "criterion": criterion, "ratios": "uniform", "recipe": "bn",
                            "flops_reduction": str(target), "seed": str(seed)},
                           {"test_accuracy": 0.4 + 0.02 * i + 0.05 * seed, "macs_reduction": target})
               for i, criterion in enumerate(names) for target in (0.3, 0.5) for seed in (0, 1)]
    tables = study_tables(long_rows(records), config.significance, config.reference)
    # the same tables with the non-reference criteria's intervals removed: only their bars differ
    bare = replace_fields(tables, summary=[{**r, "ci_low": None, "ci_high": None} if r["criterion"] != "random" else r
                                           for r in tables.summary])
    drawn, without = imread(plot_accuracy(tables, 0.9, tmp_path / "drawn.png")), \
        imread(plot_accuracy(bare, 0.9, tmp_path / "bare.png"))
    assert drawn.shape == without.shape and (drawn != without).any()


def test_concentration_ratios_default_to_the_minmax_fusion_and_take_rank():
    config = StudyConfig.from_dict({**MINIMAL, "ratios": [
        "concentration", {"name": "concentration", "fusion": "rank", "label": "ic-rank"}]})
    assert [(r.label, r.options["fusion"]) for r in config.ratios] == [("concentration", "minmax"), ("ic-rank", "rank")]
    assert StudyConfig.from_dict(config.to_dict()).ratios == config.ratios  # the resolved config round-trips


def test_ratios_resolve_through_the_ratio_source_registry(extra_ratio_source):
    """A source registered in pruning.planning is a study's ``ratios:`` entry: its options are the
    keys, defaults filled in, its own checks name the key path; ``create`` is the registry's source."""
    from pruning.planning import create_ratio_source

    config = StudyConfig.from_dict({**MINIMAL, "ratios": [extra_ratio_source, {"name": "snpfi", "budget": "global"}]})
    assert [(r.name, r.options) for r in config.ratios] == [
        (extra_ratio_source, {"first": 0.5}), ("snpfi", {"tau": 0.95, "budget": "global"})]
    assert config.ratios[0].create() == create_ratio_source(extra_ratio_source)
    with pytest.raises(ConfigError, match=r"^ratios\[0\]\.first: must be > 0, got 0$"):
        StudyConfig.from_dict({**MINIMAL, "ratios": [{"name": extra_ratio_source, "first": 0}]})
    with pytest.raises(ConfigError, match=r"^ratios\[0\]\.frist: unknown key; valid: first$"):
        StudyConfig.from_dict({**MINIMAL, "ratios": [{"name": extra_ratio_source, "frist": 1}]})
