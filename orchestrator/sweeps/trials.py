"""The sweep trial, run as a Tune trial in a Ray worker: one sampled plan of the search space,
checked, pruned, recovered with the sweep's recipe, scored on the calibration split, measured,
and reported once with the pruned model as its checkpoint (engine parts:
:mod:`orchestrator.experiment.worker`)."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from orchestrator.experiment.trial_meta import split_config
from orchestrator.experiment.worker import (
    CriterionPlan, SharedRefs, WorkerSettings, cost_metrics, fetch_baseline, prune_and_recover, releases_memory,
    trial_metric_names,
)
from orchestrator.sweeps.latency import LATENCY_METRICS, trial_latency
from orchestrator.sweeps.objectives import infeasible_value
from pruning.recovery import RecoveryRecipe
from pruning.utils import model_device

__all__ = ["TRIAL_TAGS", "MODEL_FILE", "SweepTrialSettings", "sweep_trial",
           "trial_metrics"]


def trial_metrics(task) -> tuple[str, ...]:
    """The numeric results a sweep trial of ``task`` reports (the latency ones only when
    latency_ms is an objective): the worker's (every task metric, ``bn_<P>``, the stages') and
    the costs and timings; the steps' come by name pattern (:func:`step_metric_pattern`)."""
    return (*trial_metric_names(task), "macs", "params", "macs_reduction", "params_reduction", *LATENCY_METRICS,
            "feasible", "body_seconds", "cpu_seconds", "trial_cpus", "trial_gpus", "trial_seconds")


#: string results logged as tags; ``recipe``: the recipe the trial ran, as JSON (a two-stage
#: sweep ignores the sampled fine-tuning params, so they do not say what ran); ``device``: where
#: the trial's model ran (e.g. ``cuda:0``, ``cpu``)
TRIAL_TAGS = ("criterion", "infeasible_reason", "recipe", "device")
MODEL_FILE = "pruned.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SweepTrialSettings:
    """What every trial of a sweep stage shares (small; travels with the trainable).

    worker: the baseline's :class:`~orchestrator.experiment.worker.WorkerSettings`.
    space: the built :class:`~search_spaces.SearchSpace` (its plans); strategy: the pruning strategy.
    seed: the criterion's seed.
    recipe: the recovery recipe; a trial replaces its fine-tuning values by the sampled ones
        (unless ``sampled_finetune`` is false: the stages of a two-stage sweep run their recipe
        as it is).
    score_every_stage: score every recovery stage (False: the last only; screening trials).
    latency_table: the baseline's :class:`~pruning.latency.LatencyTable` when ``latency_ms`` is
        an objective (None: no latency); measure_latency: also export and time the pruned model
        on the table's target (refined trials; the others report the table's prediction).
    """

    worker: WorkerSettings
    space: Any
    strategy: str
    seed: int
    recipe: RecoveryRecipe
    latency_table: Any = None
    measure_latency: bool = False
    sampled_finetune: bool = True
    score_every_stage: bool = True


def _report_restored() -> bool:
    """Report the saved result again, without running, when this trial finished before: restored
    from its final checkpoint, or killed between its report and the experiment snapshot that would
    have recorded it (Tune then restarts it from scratch, in the same folder, where that checkpoint
    lies unrecorded). A checkpoint that does not read back (a kill mid-upload) runs the trial again."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            metrics = _read_saved(Path(folder))
        if metrics is None:
            return False
        tune.report(metrics)
        return True
    saved = sorted(Path(tune.get_context().get_storage().trial_fs_path).glob("checkpoint_*"))
    metrics = _read_saved(saved[-1]) if saved else None
    if metrics is None:
        return False
    # reported with its checkpoint, so that Tune (which did not record it) holds the model again
    with tempfile.TemporaryDirectory(prefix="prunesweep-") as folder:
        shutil.copytree(saved[-1], folder, dirs_exist_ok=True)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    return True


def _read_saved(folder: Path) -> dict[str, Any] | None:
    """The metrics a trial checkpoint folder holds, or None where its files do not read back."""
    from pruning.structure import CheckpointError, read_checkpoint

    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
        read_checkpoint(folder / MODEL_FILE)
    except (OSError, ValueError, CheckpointError):
        return None
    return metrics


def _report_with_model(metrics: dict[str, Any], pruned: nn.Module, spec_json: str, meta: dict[str, Any]) -> None:
    from ray import tune

    from pruning.structure import ModelSpec, save_checkpoint

    spec = ModelSpec.from_json(spec_json)
    with tempfile.TemporaryDirectory(prefix="prunesweep-") as folder:
        save_checkpoint(Path(folder) / MODEL_FILE, pruned, replace(spec, meta={**spec.meta, "pruning": meta}))
        (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@releases_memory
def sweep_trial(config: dict[str, Any], *, refs: SharedRefs, settings: SweepTrialSettings) -> None:
    """One sweep trial (runs in a Ray worker): plan, check, prune, recover, score, report once."""
    import ray
    from ray import tune

    from search_spaces import SpaceContext

    entered = time.perf_counter()
    settings.worker.enter()
    if _report_restored():
        return
    started, cpu_started = time.perf_counter(), time.process_time()
    params, meta = split_config(config)
    baseline = fetch_baseline(refs, settings.worker)
    context = SpaceContext(space=baseline.space, strategy=settings.strategy, stats=baseline.stats,
                           utilization=baseline.utilization)
    plan = settings.space.to_plan(params, context)
    reason = settings.space.check_feasible(plan, context)
    base = settings.worker.baseline
    if reason is not None:
        task = baseline.task
        worst = {**{m.name: infeasible_value(m) for m in task.metrics},
                 f"bn_{task.primary}": infeasible_value(task.metric(task.primary)),
                 "macs": base["macs"], "params": base["params"],
                 "macs_reduction": 0.0, "params_reduction": 0.0, "feasible": 0, "criterion": plan.criterion,
                 "infeasible_reason": reason, "trial_seconds": time.perf_counter() - entered}
        if settings.latency_table is not None:
            worst["latency_ms"] = base["latency_ms"]
        tune.report(worst)
        return
    recipe = settings.recipe
    if meta.steps is not None:  # one of the step counts its refinement lists
        recipe = replace(recipe, steps=meta.steps)
    if settings.sampled_finetune:
        recipe = replace(recipe, finetune_epochs=plan.finetune_epochs, finetune_lr=plan.finetune_lr,
                         weight_decay=plan.weight_decay)
    pruned, outcome, metrics = prune_and_recover(
        baseline.build_model(), baseline,
        CriterionPlan(plan.criterion, plan.config, plan.ratio_weights, seed=settings.seed), recipe,
        score_every_stage=settings.score_every_stage,
    )
    metrics.update(cost_metrics(pruned, settings.worker))
    if settings.latency_table is not None:
        metrics.update(trial_latency(pruned, settings.latency_table, settings.measure_latency))
    # the trial's own time and CPU time (Tune's bookkeeping and the checkpoint excluded): the
    # compute a benchmark compares at, and the remainder of Tune's time_total_s is Tune/Ray
    assigned = ray.get_runtime_context().get_assigned_resources()
    metrics.update(feasible=1, criterion=plan.criterion, recipe=json.dumps(recipe.to_dict(), sort_keys=True),
                   body_seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu_started,
                   trial_cpus=float(assigned.get("CPU", 0.0)), trial_gpus=float(assigned.get("GPU", 0.0)),
                   device=str(model_device(pruned)),
                   # saved with the result, so that a re-report (see _report_restored) keeps it
                   trial_seconds=time.perf_counter() - entered)
    pruning = {"criterion": plan.criterion, "params": params, "channels": dict(outcome.keep),
               "strategy": settings.strategy, "space": settings.space.name, "recipe": recipe.to_dict()}
    _report_with_model(metrics, pruned, baseline.spec_json, pruning)
