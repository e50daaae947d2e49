"""Ratio sources against uniform (benchmarks/ratio_sources.py): the mean difference over the
criteria both have and how many are ahead; a cell in two studies is refused."""
import pytest

from benchmarks.ratio_sources import means, render


def _row(ratios, criterion, mean):
    return {"recipe": "bn", "ratios": ratios, "criterion": criterion, "flops_reduction": 0.5,
            "test_accuracy_mean": mean}


def test_the_difference_to_uniform_is_averaged_over_the_paired_criteria():
    uniform = [_row("uniform", "l1", 0.80), _row("uniform", "random", 0.70), _row("uniform", "fpgm", 0.60)]
    ranked = [_row("rank", "l1", 0.85), _row("rank", "random", 0.69)]  # fpgm: no rank cell, not compared
    text = render(means([uniform, ranked]))
    assert "| bn | rank | +2.00 (1/2) |" in text
    assert "| l1 | +5.00 |" in text and "| random | -1.00 |" in text and "| fpgm |  |" in text


def test_a_cell_held_by_two_studies_is_refused():
    with pytest.raises(SystemExit, match="two studies hold"):
        means([[_row("uniform", "l1", 0.8)], [_row("uniform", "l1", 0.7)]])
