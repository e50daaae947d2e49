"""Tasks: the data, loss, metrics and game worth a model is pruned for (see :mod:`pruning.tasks._base`).

Importing this package registers the built-in tasks: ``classification`` (the default) and
``segmentation`` (canvases composed from a classification dataset's images).
"""
from pruning.tasks._base import (
    DIRECTIONS,
    Metric,
    MetricMeter,
    Task,
    TaskSourceError,
    TaskSpec,
    create_task,
    list_tasks,
    register_task,
    task_class,
)
from pruning.tasks.classification import Classification
from pruning.tasks.segmentation import CanvasDataset, Segmentation

__all__ = [
    "CanvasDataset",
    "Classification",
    "DIRECTIONS",
    "Metric",
    "MetricMeter",
    "Segmentation",
    "Task",
    "TaskSourceError",
    "TaskSpec",
    "create_task",
    "list_tasks",
    "register_task",
    "task_class",
]
