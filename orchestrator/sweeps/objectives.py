"""What a sweep optimises: its task's metrics (``accuracy`` for classification, ``miou`` and
``pixel_accuracy`` for segmentation, a user task's own) and the costs of the pruned model.

Every metric comes with the only direction that makes sense for it: a task metric its own
(:class:`pruning.tasks.Metric`), a cost ``min``. The default objectives are the task's primary
metric and MACs. The front, its table and plot, the hypervolume and ``prunesweep pareto`` all
name the task's metrics: ``<P>`` on the calibration split (what trials are scored on),
``bn_<P>`` before fine-tuning and ``test_<P>`` on the test split, ``P`` the primary metric.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from orchestrator.experiment.checks import ConfigError, check_keys, check_mapping

__all__ = ["COSTS", "metric_directions", "default_objectives", "check_objectives", "task_metric",
           "infeasible_value", "hypervolume_reference", "check_task_named", "best_first"]

#: the cost metrics every sweep measures (``latency_ms`` only with that objective): lower is better
COSTS = {"macs": "min", "params": "min", "latency_ms": "min"}


def metric_directions(task) -> dict[str, str]:
    """Every metric a sweep of ``task`` may optimise -> its direction: the task's, then the costs."""
    return {**{m.name: m.direction for m in task.metrics}, **COSTS}


def default_objectives(task) -> dict[str, str]:
    """The task's primary metric (its direction) and MACs."""
    return {task.primary: task.metric(task.primary).direction, "macs": "min"}


def check_objectives(objectives: Mapping[str, Any] | None, task) -> dict[str, str]:
    """``sweep.objectives`` checked against ``task`` (None: :func:`default_objectives`); a
    metric the task does not report, or a direction that is not the metric's, is a one-line
    :class:`ConfigError` naming the valid ones."""
    if objectives is None:
        return default_objectives(task)
    directions = metric_directions(task)
    objectives = check_mapping("sweep.objectives", objectives)
    if not objectives:
        raise ConfigError("sweep.objectives", f"name at least one of {', '.join(directions)}")
    check_keys("sweep.objectives.", objectives, list(directions))
    for metric, direction in objectives.items():
        if direction != directions[metric]:
            better = "higher" if directions[metric] == "max" else "lower"
            raise ConfigError(f"sweep.objectives.{metric}",
                              f"must be {directions[metric]!r} ({better} is better), got {direction!r}")
    return dict(objectives)


def task_metric(objectives: Mapping[str, str]) -> str | None:
    """The first task metric among ``objectives`` (the one the front is read by); None when
    they are all costs."""
    return next((k for k in objectives if k not in COSTS), None)


def best_first(objectives: Mapping[str, str]) -> Callable[[Mapping[str, Any]], float]:
    """A sort key over points that puts the best value of :func:`task_metric` first (its
    direction's), a point without it last; every point ties when the objectives are all costs."""
    score = task_metric(objectives)
    sign = -1.0 if score is None or objectives[score] == "max" else 1.0

    def key(point: Mapping[str, Any]) -> float:
        value = point.get(score) if score is not None else 0.0
        return sign * float(value) if value is not None else math.inf
    return key


def infeasible_value(metric) -> float:
    """What an infeasible trial reports for a task :class:`~pruning.tasks.Metric`: 0 for a
    higher-is-better metric (accuracy, mIoU: never below 0, and finite for the sampler), the
    metric's worst value otherwise."""
    return 0.0 if metric.direction == "max" else metric.worst()


def hypervolume_reference(objectives: Mapping[str, str], baseline: Mapping[str, float]) -> dict[str, float]:
    """The hypervolume's reference point: 0 for a higher-is-better task metric, the unpruned
    baseline's value for a cost; NaN (no hypervolume) for a lower-is-better task metric, which
    has no natural bound (the baseline's value would exclude nearly every pruned model)."""
    reference = {}
    for metric, direction in objectives.items():
        if metric in COSTS:
            reference[metric] = baseline.get(metric, math.nan)
        else:
            reference[metric] = 0.0 if direction == "max" else math.nan
    return reference


def check_task_named(configured, recorded) -> None:
    """Refuse a baseline whose checkpoint records a task (``recorded``, a TaskSpec) other than the
    one the config runs (``configured``: its ``task:``, classification where none is given): the
    config's objectives and columns were checked against the configured one."""
    if recorded != configured:
        raise ConfigError("task", f"the checkpoint records task {recorded.name!r}, the config runs "
                                  f"{configured.name!r}; add task: {recorded.name} (and its task_kwargs) to the config")
