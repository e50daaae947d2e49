"""Pareto dominance, exact hypervolume on hand-computed cases, the plot and the table."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from orchestrator.report import format_value
from orchestrator.sweeps import front_table, hypervolume, pareto_front, plot_front

ACC_MACS = {"accuracy": "max", "macs": "min"}


def pts(*rows, keys=("accuracy", "macs")):
    return [dict(zip(keys, row)) for row in rows]


# ---------------------------------------------------------------------------------------------
# dominance


def test_front_max_min_mix():
    points = pts((0.90, 10.0), (0.80, 5.0), (0.85, 12.0), (0.70, 5.0), (0.95, 20.0), (0.60, 1.0))
    # (0.85, 12) is dominated by (0.90, 10); (0.70, 5) by (0.80, 5): equal MACs, worse accuracy
    assert pareto_front(points, ACC_MACS) == [0, 1, 4, 5]


def test_front_directions_matter():
    points = pts((1.0, 1.0), (2.0, 2.0), keys=("a", "b"))
    assert pareto_front(points, {"a": "max", "b": "max"}) == [1]
    assert pareto_front(points, {"a": "min", "b": "min"}) == [0]
    assert pareto_front(points, {"a": "max", "b": "min"}) == [0, 1]
    assert pareto_front(points, {"a": "min"}) == [0]


def test_identical_points_are_all_kept():
    points = pts((0.9, 10.0), (0.9, 10.0), (0.8, 10.0))
    assert pareto_front(points, ACC_MACS) == [0, 1]


def test_nan_missing_and_infeasible_points_are_excluded():
    points = [
        {"accuracy": 0.99, "macs": 1.0, "feasible": False},  # would dominate everything
        {"accuracy": math.nan, "macs": 0.5},
        {"macs": 0.1},  # no accuracy (failed trial)
        {"accuracy": 0.5, "macs": 10.0, "feasible": True},
        {"accuracy": 0.4, "macs": 12.0},
        {"accuracy": 0.3, "macs": 8.0, "feasible": None},
    ]
    assert pareto_front(points, ACC_MACS) == [3, 5]
    assert hypervolume(points, ACC_MACS, {"accuracy": 0.0, "macs": 20.0}) == pytest.approx(
        10.0 * 0.5 + 2.0 * 0.3
    )


def test_empty_and_bad_objectives():
    assert pareto_front([], ACC_MACS) == []
    assert hypervolume([], ACC_MACS, {"accuracy": 0.0, "macs": 1.0}) == 0.0
    with pytest.raises(ValueError, match="maximise|direction"):
        pareto_front(pts((1.0, 1.0)), {"accuracy": "maximise"})
    with pytest.raises(ValueError, match="at least one"):
        pareto_front(pts((1.0, 1.0)), {})
    with pytest.raises(ValueError, match="macs"):
        hypervolume(pts((1.0, 1.0)), ACC_MACS, {"accuracy": 0.0})


# ---------------------------------------------------------------------------------------------
# hypervolume


def test_hypervolume_2d_hand_case():
    points = pts((0.9, 6.0), (0.5, 2.0), (0.4, 7.0))  # the last is dominated
    ref = {"accuracy": 0.0, "macs": 10.0}
    # [macs 6..10] x [0, 0.9] plus [macs 2..6] x [0, 0.5]
    assert hypervolume(points, ACC_MACS, ref) == pytest.approx(4 * 0.9 + 4 * 0.5)


def test_hypervolume_ignores_points_not_beating_the_reference():
    ref = {"accuracy": 0.5, "macs": 10.0}
    points = pts((0.9, 12.0), (0.4, 1.0), (0.5, 5.0), (0.7, 8.0))
    assert hypervolume(points, ACC_MACS, ref) == pytest.approx(0.2 * 2.0)


def test_hypervolume_3d_hand_cases():
    objectives = {"a": "max", "b": "max", "c": "max"}
    ref = {"a": 0.0, "b": 0.0, "c": 0.0}
    keys = ("a", "b", "c")
    assert hypervolume(pts((1, 1, 1), keys=keys), objectives, ref) == pytest.approx(1.0)
    assert hypervolume(pts((2, 1, 1), (1, 2, 1), keys=keys), objectives, ref) == pytest.approx(3.0)
    assert hypervolume(pts((2, 1, 1), (1, 2, 1), (1, 1, 2), keys=keys), objectives, ref) == pytest.approx(4.0)
    # a box with a mixed direction: minimising c from reference 5, point at c = 3 -> depth 2
    mixed = {"a": "max", "b": "max", "c": "min"}
    assert hypervolume(pts((2, 3, 3), keys=keys), mixed, {"a": 0, "b": 0, "c": 5}) == pytest.approx(12.0)


def _inclusion_exclusion(boxes):
    """Union volume of origin-anchored boxes by inclusion-exclusion (exponential; tiny sets only)."""
    total = 0.0
    for r in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, r):
            corner = [min(c) for c in zip(*subset)]
            total += (-1) ** (r + 1) * math.prod(corner)
    return total


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(dims):
    rng = random.Random(dims)
    keys = [f"m{i}" for i in range(dims)]
    objectives = {k: "max" for k in keys}
    for _ in range(5):
        rows = [tuple(rng.choice([0.5, 1.0, 1.5, rng.random() * 2]) for _ in keys) for _ in range(7)]
        expected = _inclusion_exclusion(rows)
        got = hypervolume(pts(*rows, keys=keys), objectives, {k: 0.0 for k in keys})
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# plot and table


def test_plot_writes_png(tmp_path):
    points = pts((0.90, 10.0), (0.80, 5.0), (0.85, 12.0), (0.60, 1.0))
    points.append({"accuracy": 0.99, "macs": 3.0, "feasible": False})
    front = pareto_front(points, ACC_MACS)
    path = plot_front(points, ACC_MACS, front, {"accuracy": 0.92, "macs": 14.0}, tmp_path / "sub" / "front.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["front.png"]  # no temporary left behind
    # no baseline, empty front, a point without the plotted metric: still a PNG
    empty = plot_front([{"accuracy": 0.5}], ACC_MACS, [], None, tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_front_table():
    points = [
        {"accuracy": 0.9, "macs": 1234567.0, "criterion": "l1"},
        {"accuracy": 0.5, "macs": 10.0},
        {"accuracy": 0.8, "macs": 2.0, "criterion": "a|b"},
    ]
    table = front_table(points, [0, 2], ["criterion", "accuracy", "macs"])
    lines = table.strip().splitlines()
    assert lines[0] == "| index | criterion | accuracy | macs |"
    assert lines[1] == "|---|---|---|---|"
    # numbers as in every other table (orchestrator.report.format_value); Markdown pipes escaped
    assert lines[2] == "| 0 | l1 | 0.9000 | 1,234,567 |"
    assert lines[3] == "| 2 | a\\|b | 0.8000 | 2.0000 |"
    assert len(lines) == 4
    assert front_table(points, [1], ["criterion"]).strip().splitlines()[2] == "| 1 |  |"


def test_format_value_is_the_one_cell_format():
    assert [format_value(v) for v in (0.91234, 1234567.0, 12345, None, True, float("nan"), "l1")] == [
        "0.9123", "1,234,567", "12,345", "", "True", "nan", "l1"]
