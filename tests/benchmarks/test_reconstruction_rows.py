"""The row-budget study's variants parse to budgets, and its table sets each against the exact fit."""
from __future__ import annotations

import argparse
import math

import pytest

from benchmarks.reconstruction_rows import parse_variant, render


def test_variants_parse_to_budgets_and_bad_ones_are_one_line():
    budget, ridge = parse_variant("32/4/inf/0.1")
    assert (budget.rows_per_column, budget.min_rows_per_column, math.isinf(budget.cost), ridge) == (32, 4, True, 0.1)
    assert math.isinf(parse_variant("exact")[0].rows_per_column)
    with pytest.raises(argparse.ArgumentTypeError, match="variant '32/4': expected exact or rows/min_rows/cost/ridge"):
        parse_variant("32/4")


def test_the_table_shows_each_variant_against_the_exact_fit():
    rows = [{"criterion": "l1", "seed": 0, "target": 0.7, "variant": v, "accuracy": a, "seconds": s}
            for v, a, s in (("exact", 0.89, 13.5), ("32/0/0.25/0.001", 0.8483, 2.2))]
    text = render({"base_accuracy": 0.92, "test_subset": 3000, "calibration_images": 512, "threads": 1, "rows": rows})
    assert "| exact | 0.8900, 13.5 s |" in text
    assert "| 32/0/0.25/0.001 | 0.8483 (-0.0417), 2.2 s |" in text
