"""The study cell, run as a Tune trial in a Ray worker: prune its checkpoint with its criterion's
cached scores, to its target with its ratio source, recover with its recipe, and report the
task's metrics on the calibration split and its primary one on the TEST split, ``test_<P>``
(the grid is fixed in advance: nothing is selected on the test split, so it is the split a
comparison reports).

A cell saves its metrics (``Cell.result_path`` under ``StudySettings.cells_root``) before it
reports them, and a cell that finds them saved reports them again without running: a cell that
ended just before a kill, after the last experiment snapshot, is one Tune runs again on resume
(under a new trial where the snapshot predates the trial), and it must not be computed twice."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from orchestrator.studies.cells import Cell
from orchestrator.studies.axes import CriterionSettings, RatioSettings
from orchestrator.studies.config import PruningSettings
from orchestrator.experiment.worker import (
    CriterionPlan, trial_metric_names, SharedRefs, WorkerSettings, cost_metrics, fetch_baseline,
    prune_and_recover, releases_memory,
)
from pruning.recovery import RecoveryRecipe
from pruning.utils import atomic_write

__all__ = ["CELL_TAGS", "ACCURACY_SPLIT", "StudyBaseline", "StudySettings",
           "study_cell", "cell_metrics"]

#: the split every cell's ``test_<P>`` (the compared metric) is measured on
ACCURACY_SPLIT = "test"


def cell_metrics(task) -> tuple[str, ...]:
    """The numeric results a cell of ``task`` reports: every task metric, ``bn_<P>``, the stages',
    ``test_<P>`` (P its primary metric); ``scores_compute_seconds``: what computing the cell's
    scores cost, once (shared) or in this cell."""
    return (*trial_metric_names(task), f"test_{task.primary}", "macs", "params", "macs_reduction",
            "params_reduction", "scores_compute_seconds", "trial_seconds")


CELL_TAGS = ("criterion_name", "scores")


@dataclass(frozen=True)
class StudyBaseline:
    """One checkpoint's shared objects (object-store references) and worker settings."""

    refs: SharedRefs
    settings: WorkerSettings


@dataclass(frozen=True)
class StudySettings:
    """What every cell reads (small; travels with the trainable); labels -> settings."""

    criteria: Mapping[str, CriterionSettings]
    ratios: Mapping[str, RatioSettings]
    recipes: Mapping[str, RecoveryRecipe]
    pruning: PruningSettings
    scores_root: str
    cells_root: str
    share_scores: bool
    score_every_stage: bool


def _ratio_plan(ratios: RatioSettings, target: float, pruning: PruningSettings, stats, space, prior):
    """(PruningConfig, layer-wise ratio weights or None) of a ratio source at a FLOPs target."""
    from pruning.planning import RatioInputs, RatioTarget

    plan = ratios.create().plan(
        RatioTarget(flops_reduction=target, strategy=pruning.strategy, max_layer_ratio=pruning.max_layer_ratio,
                    min_channels=pruning.min_channels, round_to=pruning.round_to),
        RatioInputs(space, stats=stats, utilization=(prior or {}).get("utilization")),
    )
    return plan.config, plan.ratio_weights


@releases_memory
def study_cell(config: dict[str, Any], *, refs: Mapping[str, StudyBaseline], settings: StudySettings) -> None:
    """One study cell (``config``: :meth:`Cell.trial_config`); ``refs``: checkpoint label ->
    :class:`StudyBaseline`. Reports once, its saved metrics where it ran before; a cell whose
    scores failed raises their error."""
    from ray import tune

    entered = time.perf_counter()
    cell = Cell.from_params(config)
    saved = cell.result_path(settings.cells_root)
    metrics = _read_saved(saved)
    if metrics is None:
        metrics = _run_cell(cell, refs[cell.checkpoint], settings)
        metrics["trial_seconds"] = time.perf_counter() - entered  # what it took, kept when reported again
        atomic_write(saved, lambda tmp: tmp.write_text(json.dumps(metrics)))
    tune.report(metrics)


def _read_saved(path: Path) -> dict[str, Any] | None:
    """A cell's saved metrics, or None where there are none (or a kill left them unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_cell(cell: Cell, baseline: StudyBaseline, settings: StudySettings) -> dict[str, Any]:
    from orchestrator.studies.scores import load_scores
    from pruning.data import make_eval_loader
    from pruning.training import evaluate
    from pruning.utils import model_device

    baseline.settings.enter()
    criterion = settings.criteria[cell.criterion]
    ratios = settings.ratios[cell.ratios]
    scores, seconds = None, None
    if settings.share_scores:
        payload = load_scores(settings.scores_root, cell.score_key)
        scores, seconds = payload["scores"], payload["seconds"]
    prior = load_scores(settings.scores_root, cell.prior_key) if ratios.create().needs_utilization else None
    shared = fetch_baseline(baseline.refs, baseline.settings)
    pruning_config, ratio_weights = _ratio_plan(ratios, cell.flops_reduction, settings.pruning, shared.stats,
                                                shared.space, prior)
    plan = CriterionPlan(criterion.name, pruning_config, ratio_weights, seed=cell.seed, options=criterion.options,
                         scores=scores)
    pruned, _, metrics = prune_and_recover(shared.build_model(), shared, plan,
                                           replace(settings.recipes[cell.recipe], seed=cell.seed),
                                           score_every_stage=settings.score_every_stage)
    metrics.update(cost_metrics(pruned, baseline.settings))
    task = shared.task
    metrics[f"test_{task.primary}"] = evaluate(pruned, make_eval_loader(shared.splits.test, model_device(pruned)),
                                               task=task).score
    # unshared, the scores were computed in this cell: their cost is part of prune_seconds
    metrics["scores_compute_seconds"] = seconds if seconds is not None else metrics["prune_seconds"]
    metrics.update(criterion_name=criterion.name, scores="shared" if settings.share_scores else "computed in the cell")
    return metrics
