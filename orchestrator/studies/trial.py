"""The study cell, run as a Tune trial in a Ray worker: prune its checkpoint with its criterion's
cached scores, to its target with its ratio source, recover with its recipe, and report the
calibration and TEST accuracy (the grid is fixed in advance: nothing is selected on the test
split, so it is the split a comparison reports).

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

import torch

from orchestrator.studies.cells import Cell
from orchestrator.studies.config import CriterionSettings, PruningSettings, RatioSettings
from orchestrator.sweeps.trials import (
    STAGE_METRICS, SharedRefs, TrialSettings, _cost_metrics, _load_trial_data, _make_importable, _prune_and_recover,
    _rebuild_model, _releases_memory, _trial_device,
)
from pruning.recovery import RecoveryRecipe
from pruning.utils import atomic_write

__all__ = ["CELL_METRICS", "CELL_TAGS", "ACCURACY_SPLIT", "StudyBaseline", "StudySettings", "study_cell"]

#: the split every cell's ``test_accuracy`` (the compared metric) is measured on
ACCURACY_SPLIT = "test"
#: ``scores_compute_seconds``: what computing the cell's scores cost, once (shared) or in this cell
CELL_METRICS = ("accuracy", "bn_accuracy", *STAGE_METRICS, "test_accuracy", "macs", "params", "macs_reduction",
                "params_reduction", "planned_reduction", "prune_seconds", "recover_seconds", "score_seconds",
                "scores_compute_seconds", "trial_seconds")
CELL_TAGS = ("criterion_name", "scores")


@dataclass(frozen=True)
class StudyBaseline:
    """One checkpoint's shared objects (object-store references) and trial settings."""

    refs: SharedRefs
    settings: TrialSettings


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


@_releases_memory
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
    import ray

    from orchestrator.studies.scores import load_scores
    from pruning.data import make_eval_loader
    from pruning.training import evaluate
    from pruning.utils import model_device

    base = baseline.settings
    torch.set_num_threads(base.threads)
    _make_importable(base)
    criterion = settings.criteria[cell.criterion]
    ratios = settings.ratios[cell.ratios]
    scores, seconds = None, None
    if settings.share_scores:
        payload = load_scores(settings.scores_root, cell.score_key)
        scores, seconds = payload["scores"], payload["seconds"]
    prior = load_scores(settings.scores_root, cell.prior_key) if ratios.create().needs_utilization else None
    model = _rebuild_model(*ray.get(baseline.refs.model)).to(_trial_device())
    space = ray.get(baseline.refs.space)
    stats = ray.get(baseline.refs.stats) if baseline.refs.stats is not None else None
    splits = _load_trial_data(base)
    pruning_config, ratio_weights = _ratio_plan(ratios, cell.flops_reduction, settings.pruning, stats, space, prior)
    pruned, _, metrics = _prune_and_recover(
        model, space, base.shape, criterion.name, pruning_config, ratio_weights, ray.get(baseline.refs.batches),
        stats, splits, seed=cell.seed, recipe=replace(settings.recipes[cell.recipe], seed=cell.seed),
        criterion_options=criterion.options, scores=scores, score_every_stage=settings.score_every_stage,
    )
    metrics.update(_cost_metrics(pruned, base.shape, base.baseline, False, base.threads))
    metrics["test_accuracy"] = evaluate(pruned, make_eval_loader(splits.test, model_device(pruned))).accuracy
    # unshared, the scores were computed in this cell: their cost is part of prune_seconds
    metrics["scores_compute_seconds"] = seconds if seconds is not None else metrics["prune_seconds"]
    metrics.update(criterion_name=criterion.name, scores="shared" if settings.share_scores else "computed in the cell")
    return metrics
