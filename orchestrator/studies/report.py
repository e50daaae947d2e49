"""A study's tables and plots, from its cells as logged (MLflow records, or the long table's rows).

* the long table: one row per cell (CSV and Markdown);
* the summary: per recipe x ratios x criterion x target, the mean test score (the task's primary
  metric, ``test_<P>``: ``test_accuracy`` for classification) and its interval;
* the paired table: per recipe x ratios x criterion, the difference to the reference criterion
  over the same (checkpoint, seed, target) pairs, its interval and p-value;
* the recipe table (only with ``significance.reference_recipe``): per recipe x ratios x criterion
  x target, the difference to the reference recipe over the same (checkpoint, seed) pairs;
* the rank table: average ranks over every (checkpoint, seed, target, recipe, ratios) setting,
  Friedman's test and the critical difference;
and the plots drawn from them (:mod:`orchestrator.studies.plots`).

Every column and label names the compared metric (:class:`ComparedMetric`); a classification
study's are those of ``accuracy``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.report import format_table, format_value
from orchestrator.studies.cells import CELL_PARAMS, Cell
from orchestrator.studies.config import SignificanceSettings
from orchestrator.studies.significance import Paired, average_ranks, mean_interval, paired_comparison
from orchestrator.studies.trial import ACCURACY_SPLIT
from pruning.tasks import Metric
from pruning.utils import atomic_write

__all__ = ["ComparedMetric", "LONG_COLUMNS", "RECIPE_PAIRED_COLUMNS", "StudyTables", "long_rows", "study_tables",
           "write_tables"]


@dataclass(frozen=True)
class ComparedMetric:
    """What a study compares: the task's primary :class:`~pruning.tasks.Metric` on the test split
    (:data:`~orchestrator.studies.trial.ACCURACY_SPLIT`), and the columns and labels it gives."""

    metric: Metric = Metric("accuracy", "max")

    @classmethod
    def of(cls, task) -> ComparedMetric:
        """The primary metric of a :class:`~pruning.tasks.Task`."""
        return cls(task.metric(task.primary))

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def direction(self) -> str:
        """``max``: higher is better; ``min``: lower is."""
        return self.metric.direction

    @property
    def test(self) -> str:
        """Its cells' column: ``test_<name>``."""
        return f"test_{self.name}"

    @property
    def label(self) -> str:
        """How tables and plots name it (``test accuracy``, ``test miou``)."""
        return f"test {self.name.replace('_', ' ')}"

    @property
    def best(self) -> str:
        """Rank 1's meaning."""
        if self.name == "accuracy":
            return "most accurate"
        return f"{'highest' if self.direction == 'max' else 'lowest'} {self.name}"

    def long_columns(self) -> tuple[str, ...]:
        return ("cell", *CELL_PARAMS, "status", self.test, self.name, f"bn_{self.name}", "macs_reduction",
                "params_reduction", "scores_compute_seconds", "prune_seconds", "recover_seconds", "trial_seconds",
                "error")

    def summary_columns(self) -> tuple[str, ...]:
        return ("recipe", "ratios", "criterion", "flops_reduction", "n", "failed", f"{self.test}_mean",
                "ci_low", "ci_high", "macs_reduction_mean")


#: a classification study's columns
LONG_COLUMNS = ComparedMetric().long_columns()
SUMMARY_COLUMNS = ComparedMetric().summary_columns()
PAIRED_COLUMNS = ("recipe", "ratios", "criterion", "reference", "pairs", "mean_difference", "ci_low", "ci_high",
                  "p_value", "test")
RECIPE_PAIRED_COLUMNS = ("recipe", "ratios", "criterion", "flops_reduction", "reference_recipe", "pairs",
                         "mean_difference", "ci_low", "ci_high", "p_value", "test")
RANK_COLUMNS = ("criterion", "average_rank")


def long_rows(records: Sequence[Any], metric: ComparedMetric = ComparedMetric()) -> list[dict[str, Any]]:
    """One row per logged cell (a :class:`~orchestrator.experiment.tracking.TrialRecord`), in cell
    order, with ``metric``'s columns."""
    columns = metric.long_columns()
    rows = []
    for record in records:
        cell = Cell.from_params(record.params)
        row: dict[str, Any] = {"cell": cell.id, **{k: getattr(cell, k) for k in CELL_PARAMS}, "status": record.status}
        row.update({k: record.metrics.get(k) for k in columns if k in record.metrics})
        row["error"] = record.error if record.status == "FAILED" else None
        rows.append({k: row.get(k) for k in columns})
    return sorted(rows, key=lambda r: Cell.from_params(r))


def _finished(rows, metric: ComparedMetric):
    return [r for r in rows if r["status"] == "FINISHED" and r.get(metric.test) is not None]


@dataclass
class StudyTables:
    """Every table of a study, as rows (dicts keyed by the column names)."""

    long: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    ranks: list[dict[str, Any]]
    rank_test: dict[str, Any] = field(default_factory=dict)
    significance: dict[str, Any] = field(default_factory=dict)
    #: each recipe against ``significance["reference_recipe"]``; None: recipes are not compared
    recipe_paired: list[dict[str, Any]] | None = None
    metric: ComparedMetric = ComparedMetric()

    def to_dict(self) -> dict[str, Any]:
        """The summary, paired (and recipe) and rank tables and the settings, as plain data."""
        recipes = {} if self.recipe_paired is None else {"recipe_paired": self.recipe_paired}
        return {"summary": self.summary, "paired": self.paired, **recipes, "ranks": self.ranks,
                "rank_test": self.rank_test, "significance": self.significance}

    def text(self) -> str:
        """The summary, paired (and recipe) and rank tables as aligned text."""
        parts = [f"{self.metric.label} (split: {ACCURACY_SPLIT}), mean and {self._interval_name()}",
                 _text(self.summary, self.metric.summary_columns())]
        if self.paired:
            parts += [f"paired with {self.significance['reference']}", _text(self.paired, PAIRED_COLUMNS)]
        if self.recipe_paired:
            parts += [f"paired with recipe {self.significance['reference_recipe']}",
                      _text(self.recipe_paired, RECIPE_PAIRED_COLUMNS)]
        if self.ranks:
            parts += [f"average rank (1 = {self.metric.best})", _text(self.ranks, RANK_COLUMNS), self._rank_note()]
        return "\n".join(parts)

    def markdown(self) -> str:
        """The same tables in Markdown (what ``benchmarks/study_tables.py`` writes into a document)."""
        parts = [f"{self.metric.label.capitalize()} (split: `{ACCURACY_SPLIT}`), mean and "
                 f"{self._interval_name()}.", "", to_markdown(self.summary, self.metric.summary_columns())]
        if self.paired:
            parts += ["", f"Paired with `{self.significance['reference']}` over the same (checkpoint, seed, target) "
                      f"pairs ({self.significance['paired_test']}, two-sided).", "", to_markdown(self.paired, PAIRED_COLUMNS)]
        if self.recipe_paired:
            parts += ["", f"Paired with recipe `{self.significance['reference_recipe']}` over the same (checkpoint, "
                      f"seed) pairs ({self.significance['paired_test']}, two-sided).", "",
                      to_markdown(self.recipe_paired, RECIPE_PAIRED_COLUMNS)]
        if self.ranks:
            parts += ["", f"Average rank (1 = {self.metric.best}).", "", to_markdown(self.ranks, RANK_COLUMNS), "",
                      self._rank_note()]
        return "\n".join(parts) + "\n"

    def _interval_name(self) -> str:
        kind = "Student t" if self.significance.get("interval") == "t" else "percentile bootstrap"
        return f"{self.significance.get('confidence', 0.95):.0%} {kind} interval over checkpoints x seeds"

    def _rank_note(self) -> str:
        test = self.rank_test
        if test.get("friedman_p") is None:
            return f"{test.get('blocks', 0)} complete settings; Friedman's test needs 3 criteria and 2 settings"
        return (f"{test['blocks']} complete settings; Friedman chi2 {test['friedman_statistic']:.3f}, "
                f"p {test['friedman_p']:.4g}; Nemenyi critical difference {test['critical_difference']:.3f}")


def study_tables(rows: Sequence[Mapping[str, Any]], significance: SignificanceSettings, reference: str | None,
                 reference_recipe: str | None = None, metric: ComparedMetric = ComparedMetric()) -> StudyTables:
    """Summary, paired and rank tables of the long table ``rows`` over ``metric``; with
    ``reference_recipe``, the recipe table too."""
    options = dict(confidence=significance.confidence, samples=significance.bootstrap_samples, seed=significance.seed)
    column = metric.test
    done = _finished(rows, metric)
    summary = []
    for recipe, ratios, criterion, target in dict.fromkeys((r["recipe"], r["ratios"], r["criterion"],
                                                           r["flops_reduction"]) for r in rows):
        cell = [r for r in rows if (r["recipe"], r["ratios"], r["criterion"], r["flops_reduction"])
                == (recipe, ratios, criterion, target)]
        ok = [r for r in done if r in cell]
        spread = mean_interval([r[column] for r in ok], method=significance.interval, **options)
        macs = [r["macs_reduction"] for r in ok if r.get("macs_reduction") is not None]
        summary.append({"recipe": recipe, "ratios": ratios, "criterion": criterion, "flops_reduction": target,
                        "n": spread.n, "failed": sum(r["status"] == "FAILED" for r in cell),
                        f"{column}_mean": spread.mean, "ci_low": spread.low, "ci_high": spread.high,
                        "macs_reduction_mean": sum(macs) / len(macs) if macs else None})
    paired = []
    if reference is not None:
        for recipe, ratios, criterion in dict.fromkeys((r["recipe"], r["ratios"], r["criterion"]) for r in rows):
            if criterion == reference:
                continue
            mine = {(r["checkpoint"], r["seed"], r["flops_reduction"]): r[column] for r in done
                    if (r["recipe"], r["ratios"], r["criterion"]) == (recipe, ratios, criterion)}
            theirs = {(r["checkpoint"], r["seed"], r["flops_reduction"]): r[column] for r in done
                      if (r["recipe"], r["ratios"], r["criterion"]) == (recipe, ratios, reference)}
            result = _paired(mine, theirs, significance)
            paired.append({"recipe": recipe, "ratios": ratios, "criterion": criterion, "reference": reference,
                           "pairs": result.n, "mean_difference": result.mean, "ci_low": result.low,
                           "ci_high": result.high, "p_value": result.p_value, "test": result.test})
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    blocks: dict[tuple, dict[str, float]] = {}
    for r in done:
        # ranked higher first: a lower-is-better metric negated
        blocks.setdefault((r["checkpoint"], r["seed"], r["flops_reduction"], r["recipe"], r["ratios"]), {})[
            r["criterion"]] = r[column] if metric.direction == "max" else -r[column]
    ranks = average_ranks(list(blocks.values()), criteria, confidence=significance.confidence)
    rank_rows = sorted(({"criterion": c, "average_rank": v} for c, v in ranks.average.items()),
                       key=lambda r: r["average_rank"])
    rank_test = {"blocks": ranks.blocks, "friedman_statistic": ranks.friedman_statistic,
                 "friedman_p": ranks.friedman_p, "critical_difference": ranks.critical_difference}
    settings = {"interval": significance.interval, "confidence": significance.confidence, "reference": reference,
                "reference_recipe": reference_recipe, "paired_test": significance.paired_test,
                "accuracy_split": ACCURACY_SPLIT}
    recipe_paired = None if reference_recipe is None else _recipe_paired(rows, done, significance, reference_recipe,
                                                                         column)
    return StudyTables(list(rows), summary, paired, rank_rows if len(criteria) > 1 else [], rank_test, settings,
                       recipe_paired, metric)


def _paired(mine: Mapping[tuple, float], theirs: Mapping[tuple, float], significance: SignificanceSettings) -> Paired:
    """``paired_comparison`` of ``mine - theirs`` over the keys both have."""
    pairs = sorted(set(mine) & set(theirs))
    return paired_comparison([mine[p] - theirs[p] for p in pairs], interval=significance.interval,
                             test=significance.paired_test, confidence=significance.confidence,
                             samples=significance.bootstrap_samples, seed=significance.seed)


def _replicates(done: Sequence[Mapping[str, Any]], setting: Mapping[str, Any], column: str) -> dict[tuple, float]:
    """The ``column`` (test score) of the finished cells of ``setting``, keyed by (checkpoint, seed)."""
    return {(r["checkpoint"], r["seed"]): r[column] for r in done if all(r[k] == v for k, v in setting.items())}


def _recipe_paired(rows: Sequence[Mapping[str, Any]], done: Sequence[Mapping[str, Any]],
                   significance: SignificanceSettings, reference_recipe: str, column: str) -> list[dict[str, Any]]:
    """Each recipe but ``reference_recipe`` against it: per ratios x criterion x target of
    ``rows``, the differences over the (checkpoint, seed) pairs where both cells finished (in
    ``done``)."""
    table = []
    for recipe, ratios, criterion, target in dict.fromkeys((r["recipe"], r["ratios"], r["criterion"],
                                                           r["flops_reduction"]) for r in rows):
        if recipe == reference_recipe:
            continue
        setting = {"ratios": ratios, "criterion": criterion, "flops_reduction": target}
        result = _paired(_replicates(done, {**setting, "recipe": recipe}, column),
                         _replicates(done, {**setting, "recipe": reference_recipe}, column), significance)
        table.append({"recipe": recipe, "ratios": ratios, "criterion": criterion, "flops_reduction": target,
                      "reference_recipe": reference_recipe, "pairs": result.n, "mean_difference": result.mean,
                      "ci_low": result.low, "ci_high": result.high, "p_value": result.p_value, "test": result.test})
    return table


def _text(rows, columns) -> str:
    return format_table([[row.get(c) for c in columns] for row in rows], columns)


def to_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else format_value(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_tables(tables: StudyTables, folder: Path) -> list[Path]:
    """The tables as files in ``folder``: cells.csv / cells.md (long), summary.md, summary.json."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    columns = tables.metric.long_columns()
    files = {
        "cells.csv": to_csv(tables.long, columns),
        "cells.md": to_markdown(tables.long, columns) + "\n",
        "summary.md": tables.markdown(),
        "summary.json": json.dumps(tables.to_dict(), indent=2),
    }
    for name, text in files.items():
        atomic_write(folder / name, lambda tmp, text=text: tmp.write_text(text))
    return [folder / name for name in files]
