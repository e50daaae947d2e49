"""A study's recipe table: each recipe paired with ``significance.reference_recipe`` over the same
(checkpoint, seed) at every ratios x criterion x target, from hand-built long tables (no Ray)."""
from __future__ import annotations

import json

import pytest

from orchestrator.studies import StudyConfig, StudyResult
from orchestrator.studies.report import LONG_COLUMNS, RECIPE_PAIRED_COLUMNS, study_tables, write_tables

STUDY = {"checkpoints": ["a.pt"], "criteria": ["random", "l1"], "flops_reductions": [0.3, 0.5], "seeds": [0, 1],
         "recipes": {"oneshot": {}, "stepped": {"steps": 4}}, "significance": {"reference_recipe": "oneshot"}}


def _cell(recipe, criterion, target, seed, accuracy, status="FINISHED", checkpoint="a"):
    """A row of the long table as ``study_tables`` receives it (``long_rows``)."""
    row = dict.fromkeys(LONG_COLUMNS)
    row.update(checkpoint=checkpoint, criterion=criterion, ratios="uniform", recipe=recipe, flops_reduction=target,
               seed=seed, status=status, test_accuracy=accuracy if status == "FINISHED" else None,
               macs_reduction=target)
    return row


ROWS = [
    # -50%: both seeds of both recipes finished; random +0.05 and +0.10 for stepped
    _cell("oneshot", "random", 0.5, 0, 0.50), _cell("oneshot", "random", 0.5, 1, 0.60),
    _cell("stepped", "random", 0.5, 0, 0.55), _cell("stepped", "random", 0.5, 1, 0.70),
    _cell("stepped", "random", 0.5, 0, 0.99, checkpoint="b"),  # no one-shot cell of checkpoint b: unpaired
    # l1: the stepped seed 1 failed, so only seed 0 pairs (+0.04)
    _cell("oneshot", "l1", 0.5, 0, 0.70), _cell("oneshot", "l1", 0.5, 1, 0.72),
    _cell("stepped", "l1", 0.5, 0, 0.74), _cell("stepped", "l1", 0.5, 1, None, status="FAILED"),
    # -30%: the reference recipe's only cell failed: no pair
    _cell("oneshot", "random", 0.3, 0, None, status="FAILED"), _cell("stepped", "random", 0.3, 0, 0.80),
]


@pytest.fixture
def config(tmp_path):
    return StudyConfig.from_dict({**STUDY, "run_dir": str(tmp_path / "run")})


def _tables(config, rows=ROWS):
    return study_tables(rows, config.significance, config.reference, config.reference_recipe)


def test_each_recipe_is_paired_with_the_reference_recipe_by_checkpoint_and_seed(config):
    table = {(r["recipe"], r["criterion"], r["flops_reduction"]): r for r in _tables(config).recipe_paired}
    assert set(table) == {("stepped", "random", 0.5), ("stepped", "l1", 0.5), ("stepped", "random", 0.3)}
    random = table["stepped", "random", 0.5]
    assert random["reference_recipe"] == "oneshot" and random["ratios"] == "uniform"
    assert random["pairs"] == 2 and random["mean_difference"] == pytest.approx(0.075)
    assert random["p_value"] == pytest.approx(0.5)  # two positive differences: exact 2 / 2**2
    assert random["ci_low"] < 0.075 < random["ci_high"] and random["test"] == "wilcoxon"
    l1 = table["stepped", "l1", 0.5]  # the failed cell dropped its pair
    assert l1["pairs"] == 1 and l1["mean_difference"] == pytest.approx(0.04) and l1["p_value"] is None
    unpaired = table["stepped", "random", 0.3]
    assert unpaired["pairs"] == 0 and unpaired["mean_difference"] is None


def test_the_criterion_table_still_pairs_within_each_recipe(config):
    paired = {(r["recipe"], r["criterion"]): r for r in _tables(config).paired}
    assert set(paired) == {("oneshot", "l1"), ("stepped", "l1")}
    assert paired["oneshot", "l1"]["pairs"] == 2 and paired["stepped", "l1"]["pairs"] == 1


def test_the_recipe_table_follows_the_significance_settings(tmp_path):
    config = StudyConfig.from_dict({**STUDY, "run_dir": str(tmp_path), "significance": {
        "reference_recipe": "oneshot", "interval": "bootstrap", "paired_test": "bootstrap", "bootstrap_samples": 500}})
    row = next(r for r in _tables(config).recipe_paired if (r["criterion"], r["flops_reduction"]) == ("random", 0.5))
    assert row["test"] == "bootstrap" and 0.05 <= row["ci_low"] <= row["ci_high"] <= 0.10


def test_the_recipe_table_is_written_with_the_others(config, tmp_path):
    tables = _tables(config)
    write_tables(tables, tmp_path / "report")
    written = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert written["recipe_paired"] == json.loads(json.dumps(tables.recipe_paired))
    assert written["significance"]["reference_recipe"] == "oneshot"
    markdown = (tmp_path / "report" / "summary.md").read_text()
    assert "Paired with recipe `oneshot` over the same (checkpoint, seed) pairs" in markdown
    assert "| " + " | ".join(RECIPE_PAIRED_COLUMNS) + " |" in markdown
    assert "| stepped | uniform | random | 0.5000 | oneshot | 2 | 0.0750 |" in markdown
    counts = {"cells": 11, "finished": 8, "failed": 3}
    result = StudyResult("s", config.run_dir, config.tracking_uri, "p", tables, counts)
    assert "paired with recipe oneshot" in result.text() and result.to_dict()["recipe_paired"] == tables.recipe_paired


def test_without_a_reference_recipe_there_is_no_recipe_table(tmp_path):
    config = StudyConfig.from_dict({**STUDY, "run_dir": str(tmp_path / "run"), "significance": {}})
    tables = _tables(config)
    assert tables.recipe_paired is None and tables.paired
    write_tables(tables, tmp_path / "report")
    assert "recipe_paired" not in json.loads((tmp_path / "report" / "summary.json").read_text())
    assert "Paired with recipe" not in tables.markdown() and "paired with recipe" not in tables.text()
