"""Pareto fronts of sweep results: dominance, exact hypervolume, a plot and a table.

Plain numpy and matplotlib (Agg, object-oriented: no pyplot state); nothing here touches Ray or
MLflow, the caller logs the PNG and the table as artifacts.

A *point* is a mapping of metric name -> value (one finished trial), e.g.
``{"accuracy": 0.91, "macs": 2.1e7, "feasible": True}``. ``objectives`` maps the metrics to
compare to ``"max"`` or ``"min"``. A point is *eligible* when every objective is present and
finite and its ``feasible`` flag (if any) is not false; ineligible points are never on a front
and add no hypervolume.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from orchestrator.report import format_value
from pruning.utils import atomic_write

__all__ = ["DIRECTIONS", "eligible", "pareto_front", "hypervolume", "plot_front", "front_table"]

DIRECTIONS = ("max", "min")


def _check_objectives(objectives: Mapping[str, str]) -> list[str]:
    if not objectives:
        raise ValueError("objectives must name at least one metric")
    bad = {k: v for k, v in objectives.items() if v not in DIRECTIONS}
    if bad:
        name, direction = next(iter(bad.items()))
        raise ValueError(f"objective {name!r} has direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    return list(objectives)


def _value(point: Mapping[str, Any], key: str) -> float:
    """The point's value for ``key`` as a float, NaN when missing or not a number."""
    value = point.get(key)
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def eligible(point: Mapping[str, Any], objectives: Mapping[str, str]) -> bool:
    """Every objective present and finite, and not flagged ``feasible == False``."""
    feasible = point.get("feasible", True)
    if feasible is not None and not feasible:
        return False
    return all(math.isfinite(_value(point, k)) for k in objectives)


def _maximised(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> tuple[list[int], np.ndarray]:
    """Indices of the eligible points and their objective matrix with every column to maximise."""
    keys = _check_objectives(objectives)
    sign = np.array([1.0 if objectives[k] == "max" else -1.0 for k in keys])
    index = [i for i, p in enumerate(points) if eligible(p, objectives)]
    values = np.array([[_value(points[i], k) for k in keys] for i in index], dtype=np.float64)
    return index, values.reshape(len(index), len(keys)) * sign


def _non_dominated(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (rows to maximise; duplicates all kept)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    ge = (values[:, None, :] >= values[None, :, :]).all(-1)  # ge[a, b]: a no worse than b
    gt = (values[:, None, :] > values[None, :, :]).any(-1)  # gt[a, b]: a better somewhere
    dominated = (ge & gt).any(0)
    return ~dominated


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[int]:
    """Indices (ascending) of the eligible points no other eligible point dominates.

    ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better in one;
    identical points therefore do not dominate each other and are all kept.
    """
    index, values = _maximised(points, objectives)
    mask = _non_dominated(values)
    return [i for i, keep in zip(index, mask) if keep]


def _hv2(values: np.ndarray) -> float:
    """Area dominated by rows (x, y) above the reference (0, 0): sweep along x, descending."""
    order = np.argsort(-values[:, 0], kind="stable")
    area, best_y = 0.0, 0.0
    xs, ys = values[order, 0], values[order, 1]
    for k in range(len(xs)):
        if ys[k] > best_y:
            area += xs[k] * (ys[k] - best_y)
            best_y = ys[k]
    return float(area)


def _hv(values: np.ndarray) -> float:
    """Exact hypervolume of rows > 0 w.r.t. the origin, by slicing along the last objective.

    HV = integral over t of HV_{d-1}({p : p_d >= t}); between consecutive distinct values of
    the last coordinate the set is fixed, so the integral is a sum of slabs.
    """
    n, d = values.shape
    if n == 0:
        return 0.0
    values = values[_non_dominated(values)]
    if d == 1:
        return float(values[:, 0].max())
    if d == 2:
        return _hv2(values)
    order = np.argsort(-values[:, -1], kind="stable")
    values = values[order]
    total = 0.0
    for k in range(len(values)):
        upper = values[k, -1]
        lower = values[k + 1, -1] if k + 1 < len(values) else 0.0
        if upper > lower:
            total += (upper - lower) * _hv(values[: k + 1, :-1])
    return float(total)


def hypervolume(
    points: Sequence[Mapping[str, Any]],
    objectives: Mapping[str, str],
    reference: Mapping[str, float],
) -> float:
    """Exact volume of the objective space the eligible points dominate, bounded by ``reference``.

    ``reference`` needs a finite value for every objective (typically a worst acceptable point,
    e.g. accuracy 0 and the unpruned MACs). A point contributes only where it is strictly better
    than the reference in every objective. Two objectives: a sweep line, O(n log n); more: exact
    slicing along one objective at a time (O(n^(d-1) log n), meant for sweep-sized sets).
    """
    keys = _check_objectives(objectives)
    missing = [k for k in keys if not math.isfinite(_value(reference, k))]
    if missing:
        raise ValueError(f"reference needs a finite value for objective(s): {', '.join(missing)}")
    _, values = _maximised(points, objectives)
    sign = np.array([1.0 if objectives[k] == "max" else -1.0 for k in keys])
    ref = np.array([_value(reference, k) for k in keys]) * sign
    shifted = values - ref
    shifted = shifted[(shifted > 0).all(1)]
    return _hv(shifted)


# ---------------------------------------------------------------------------------------------
# presentation


def _label(metric: str, objectives: Mapping[str, str]) -> str:
    direction = objectives.get(metric)
    shown = "MACs" if metric.lower() == "macs" else metric
    if direction == "max":
        return f"{shown} (higher is better)"
    if direction == "min":
        return f"{shown} (lower is better)"
    return shown


def plot_front(
    points: Sequence[Mapping[str, Any]],
    objectives: Mapping[str, str],
    front: Sequence[int],
    baseline: Mapping[str, float] | None,
    path: str | os.PathLike,
    axes: tuple[str, str] = ("macs", "accuracy"),
) -> Path:
    """Scatter of every trial (grey; infeasible ones as crosses), the front as a step line, and the
    unpruned ``baseline`` as a star; written to ``path`` as a PNG, atomically. Returns the path.
    ``axes``: the objectives on the (x, y) axes.

    The step line shows the attainment boundary in the (x, y) plane: from each front point it
    runs towards worse x at constant y, so it is exact for a 2-objective front over (x, y).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_objectives(objectives)
    path = Path(path)
    x, y = axes
    xy = np.array([[_value(p, x), _value(p, y)] for p in points], dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(xy).all(1)
    feasible = np.array([eligible(p, {}) for p in points], dtype=bool)

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ok = finite & feasible
    if ok.any():
        ax.scatter(xy[ok, 0], xy[ok, 1], s=14, color="0.6", label="trials", zorder=1)
    bad = finite & ~feasible
    if bad.any():
        ax.scatter(xy[bad, 0], xy[bad, 1], s=14, marker="x", color="0.75", label="infeasible", zorder=1)

    on_front = [i for i in front if 0 <= i < len(points) and finite[i]]
    if on_front:
        f = xy[on_front]
        f = f[np.argsort(f[:, 0], kind="stable")]
        where = "pre" if objectives.get(x) == "max" else "post"
        ax.step(f[:, 0], f[:, 1], where=where, color="tab:blue", linewidth=1.5, zorder=2)
        ax.scatter(f[:, 0], f[:, 1], s=30, color="tab:blue", label=f"Pareto front ({len(on_front)})", zorder=3)
    if baseline is not None:
        bx, by = _value(baseline, x), _value(baseline, y)
        if math.isfinite(bx) and math.isfinite(by):
            ax.scatter([bx], [by], s=180, marker="*", color="tab:orange", edgecolor="black",
                       linewidth=0.5, label="unpruned", zorder=4)

    ax.set_xlabel(_label(x, objectives))
    ax.set_ylabel(_label(y, objectives))
    ax.set_title(f"Pareto front: {y} vs {x} ({int(ok.sum())} feasible of {len(points)} trials)")
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _cell(value: Any) -> str:
    """A Markdown cell: the report's number formatting, pipes escaped, one line."""
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def front_table(
    points: Sequence[Mapping[str, Any]],
    front: Sequence[int],
    columns: Sequence[str],
) -> str:
    """A Markdown table of the front's points: an ``index`` column (position in ``points``) and
    ``columns``, one row per front index in the given order; missing values are empty cells."""
    header = ["index", *columns]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for i in front:
        row = [str(i), *(_cell(points[i].get(c)) for c in columns)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
