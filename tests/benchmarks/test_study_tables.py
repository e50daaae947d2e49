"""The docs' study overview (benchmarks/study_tables.py): a table per recipe, the best mean of
every (ratio source, target) column in bold."""
from benchmarks.study_tables import overview, paired_overview


def _row(recipe, ratios, criterion, target, mean, n=2):
    return {"recipe": recipe, "ratios": ratios, "criterion": criterion, "flops_reduction": target,
            "test_accuracy_mean": mean, "n": n}


def test_overview_has_a_table_per_recipe_and_bolds_each_columns_best():
    summary = [_row("bn", "uniform", "l1", 0.5, 0.70), _row("bn", "uniform", "random", 0.5, 0.60),
               _row("bn", "concentration", "l1", 0.5, 0.50), _row("bn", "concentration", "random", 0.5, 0.65),
               _row("reconstruct", "uniform", "l1", 0.5, 0.91), _row("reconstruct", "uniform", "random", 0.5, None)]
    text = overview(summary)
    bn, reconstruct = text.split("Recipe `reconstruct`")
    assert "| criterion | uniform -50% | concentration -50% |" in bn
    assert "| l1 | **0.7000** | 0.5000 |" in bn
    assert "| random | 0.6000 | **0.6500** |" in bn
    assert "| l1 | **0.9100** |" in reconstruct and "| random |  |" in reconstruct  # no finished cell: blank


def _pair(recipe, ratios, criterion, difference, p_value, pairs=18):
    return {"recipe": recipe, "ratios": ratios, "criterion": criterion, "reference": "random", "pairs": pairs,
            "mean_difference": difference, "p_value": p_value, "test": "wilcoxon"}


def test_paired_overview_shows_points_and_p_values_bold_where_significant():
    text = paired_overview([_pair("bn", "uniform", "l1", 0.0512, 0.001), _pair("bn", "uniform", "hrank", -0.2, 0.2),
                            _pair("reconstruct", "uniform", "l1", 0.004, 0.03)])
    assert "Paired with `random` (wilcoxon, two-sided)" in text and "over 18 (checkpoint, seed, target)" in text
    assert "| criterion | bn / uniform | reconstruct / uniform |" in text
    assert "| l1 | **+5.12 (p 0.001)** | **+0.40 (p 0.03)** |" in text
    assert "| hrank | -20.00 (p 0.2) |  |" in text  # not paired in that setting: blank
