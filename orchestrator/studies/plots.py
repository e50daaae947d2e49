"""A study's plots, from its tables (:class:`~orchestrator.studies.report.StudyTables`): test score
vs MACs reduction per criterion with interval bands (a panel per recipe, a line style per ratio
source), and the average ranks with the critical difference. Every axis names the compared metric.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from orchestrator.studies.report import StudyTables

__all__ = ["MAX_BANDS", "plot_accuracy", "plot_ranks"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


#: the most criteria whose interval bands the accuracy plot draws
MAX_BANDS = 5
#: the x range over which the criteria's error bars are spread (in MACs reduction)
ERROR_BAR_SPREAD = 0.03


def _colours(criteria: Sequence[str]) -> dict[str, Any]:
    """A colour per criterion: matplotlib's 10-colour cycle, or tab20 for more criteria (a full
    benchmark compares 13)."""
    if len(criteria) <= 10:
        return {c: f"C{i}" for i, c in enumerate(criteria)}
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {c: cmap(i % 20) for i, c in enumerate(criteria)}


def plot_accuracy(tables: StudyTables, baseline_accuracy: float | None, path: Path) -> Path:
    """Test score (``tables.metric``; ``baseline_accuracy``: the unpruned model's) vs measured MACs
    reduction, a line per criterion with its interval as a band,
    one panel per recipe (columns) and ratio source (rows), one legend for all. Beyond
    ``MAX_BANDS`` criteria only the reference criterion keeps its band (a dozen overlapping
    bands hide every line; the question they answer is whether a line leaves the reference's
    band) and the others' intervals are error bars, each criterion's a little apart on the x
    axis so that they do not cover each other. Each panel is scaled to its means (recipes differ
    by tens of points; a two-seed t interval can be wider than [0, 1]), the intervals clipped to
    what an accuracy can be (a higher-is-better metric: [0, 1], as accuracy and mIoU are)."""
    mean_column = f"{tables.metric.test}_mean"
    bounded = tables.metric.direction == "max"
    recipes = list(dict.fromkeys(r["recipe"] for r in tables.summary))
    ratios = list(dict.fromkeys(r["ratios"] for r in tables.summary))
    criteria = list(dict.fromkeys(r["criterion"] for r in tables.summary))
    fig = _figure(4.6 * len(recipes) + 2.2, 3.6 * len(ratios) + 0.4)
    axes = fig.subplots(len(ratios), len(recipes), squeeze=False)
    colours = _colours(criteria)
    banded_criteria = set(criteria) if len(criteria) <= MAX_BANDS else {tables.significance.get("reference")}
    for row, ratio in enumerate(ratios):
        for col, recipe in enumerate(recipes):
            ax = axes[row][col]
            means: list[float] = []
            for criterion in criteria:
                rows = [r for r in tables.summary if (r["recipe"], r["ratios"], r["criterion"]) == (recipe, ratio, criterion)
                        and r[mean_column] is not None]
                if not rows:
                    continue
                x = [r["macs_reduction_mean"] for r in rows]
                means += [r[mean_column] for r in rows]
                ax.plot(x, [r[mean_column] for r in rows], "-", marker="o", markersize=3,
                        color=colours[criterion], label=criterion)
                spanned = [r for r in rows if r["ci_low"] is not None]
                low = [max(0.0, r["ci_low"]) if bounded else r["ci_low"] for r in spanned]
                high = [min(1.0, r["ci_high"]) if bounded else r["ci_high"] for r in spanned]
                if spanned and criterion in banded_criteria:
                    ax.fill_between([r["macs_reduction_mean"] for r in spanned], low, high, color=colours[criterion],
                                    alpha=0.12, linewidth=0)
                elif spanned:
                    shift = ERROR_BAR_SPREAD * (criteria.index(criterion) / (len(criteria) - 1) - 0.5)
                    mean = [r[mean_column] for r in spanned]
                    ax.errorbar([r["macs_reduction_mean"] + shift for r in spanned], mean,
                                yerr=[[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]],
                                fmt="none", ecolor=colours[criterion], elinewidth=0.8, capsize=1.5, alpha=0.7)
            if baseline_accuracy is not None and math.isfinite(baseline_accuracy):
                ax.axhline(baseline_accuracy, color="0.5", linestyle="--", linewidth=1, label="unpruned")
                means.append(baseline_accuracy)
            if means:
                pad = max(0.01, 0.1 * (max(means) - min(means)))
                bottom, top = min(means) - pad, max(means) + pad
                ax.set_ylim(max(0.0, bottom) if bounded else bottom, min(1.0, top) if bounded else top)
            ax.set_title(f"recipe: {recipe}" + ("" if len(ratios) == 1 else f", ratios: {ratio}"), fontsize="medium")
            ax.grid(True, alpha=0.3)
            if row == len(ratios) - 1:
                ax.set_xlabel("MACs reduction (measured)")
        level = f"{tables.significance.get('confidence', 0.95):.0%}"
        whose = (f"{level} bands" if len(criteria) <= MAX_BANDS
                 else f"{level} intervals; band: {tables.significance.get('reference')}")
        axes[row][0].set_ylabel(f"{tables.metric.label} ({whose})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # a criterion missing from the first panel still gets its entry
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 1))
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize="small")
    fig.savefig(path, format="png")
    return path


def plot_ranks(tables: StudyTables, path: Path) -> Path:
    """Average ranks (best on top) with the critical difference as a bar from the best."""
    rows = tables.ranks
    fig = _figure(6.0, 0.45 * max(len(rows), 2) + 1.4)
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), [r["average_rank"] for r in rows], color="C0", alpha=0.7)
    ax.set_yticks(range(len(rows)), [r["criterion"] for r in rows])
    ax.invert_yaxis()
    cd = tables.rank_test.get("critical_difference")
    if cd is not None and rows:
        best = rows[0]["average_rank"]
        ax.axvspan(best, best + cd, color="C3", alpha=0.15, label=f"critical difference {cd:.2f}")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel(f"average rank over {tables.rank_test.get('blocks', 0)} settings (1 = {tables.metric.best})")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
