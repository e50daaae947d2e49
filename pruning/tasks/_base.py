"""The task contract: what a model is trained, scored and compared on.

A task says where the data comes from and what "good" means for a model's outputs. Everything in
prunesweep that reads labels or outputs goes through it: fine-tuning and distillation
(:func:`pruning.training.train`), evaluation (:func:`pruning.training.evaluate`), Taylor's
gradients, the coalition games' worth (Shapley, SNPFI), and the sweep's and study's metrics.
Statistics, BN recalibration and reconstruction read inputs only, so they need nothing from it.

Contract (checked for every registered task by ``tests/pruning/tasks/test_task_contract.py``):

* ``load_data(config)`` returns :class:`~pruning.data.DataSplits` whose datasets yield
  ``(inputs, targets)`` pairs; ``example_inputs(shape)`` is one batch the model accepts.
* ``loss(outputs, targets)`` is a differentiable scalar, the mean over the batch (lower = better).
* ``metric_meter()`` accumulates :meth:`MetricMeter.update` over batches and returns every name
  of ``metrics`` from :meth:`MetricMeter.compute`; ``primary`` is one of them.
* ``game_value(outputs, targets, value, reference)`` turns ``outputs`` of shape ``[M, B, ...]``
  (M coalitions on the same B inputs) into ``float64[M]``, higher = better, for every name in
  ``game_values``.
* ``distillation_loss(student, teacher, temperature)`` is a differentiable scalar that is 0 when they agree.
* ``class_labels`` is true only when every target is one class index per input (``int64[B]``):
  per-class statistics and class-balanced game batches need that and are refused otherwise.

A task of one's own is a class with ``@register_task("name")`` plus one import line in
``pruning/tasks/__init__.py``, or any factory named by an import path ``package.module:factory``
(:func:`create_task`), which is recorded in checkpoints and imported again when they are loaded.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from pruning.errors import InputError, one_line
from pruning.imports import import_attribute, is_import_path
from pruning.registry import Registry, UnknownNameError

__all__ = [
    "DIRECTIONS", "Metric", "MetricMeter", "Task", "TaskSourceError", "TaskSpec", "create_task", "list_tasks", "register_task",
    "task_class",
]

#: how a metric improves
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Metric:
    """A metric a task reports: ``name`` (a lowercase identifier, used as the MLflow metric and
    sweep objective name) and ``direction`` (``max``: higher is better, ``min``: lower is)."""

    name: str
    direction: str = "max"

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise InputError(f"metric name {self.name!r} must be a lowercase identifier")
        if self.direction not in DIRECTIONS:
            raise InputError(f"metric {self.name!r}: direction {self.direction!r} is unknown; valid: "
                             f"{', '.join(DIRECTIONS)}")

    def worst(self) -> float:
        """The value no model can do worse than (what a failed trial is scored at)."""
        return float("-inf") if self.direction == "max" else float("inf")


class MetricMeter(ABC):
    """Accumulates a task's metrics over batches of one evaluation pass."""

    @abstractmethod
    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (outputs detached, float32, on the model's device)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Every metric of the task over the batches so far."""


class Task(ABC):
    """Base class; see the module docstring for the contract."""

    #: registry name, set by ``register_task`` (an import path's tasks get theirs from :class:`TaskSpec`)
    name: ClassVar[str] = ""
    #: the metrics :meth:`metric_meter` reports
    metrics: ClassVar[tuple[Metric, ...]] = ()
    #: the metric models are compared by (sweep objectives default to it, studies rank by it)
    primary: ClassVar[str] = ""
    #: every target is one class index per input
    class_labels: ClassVar[bool] = False
    #: the worths :meth:`game_value` plays for; the first is the default
    game_values: ClassVar[tuple[str, ...]] = ("loss", "distill")
    #: the game values that compare with the unpruned network's outputs (:meth:`game_reference`)
    reference_values: ClassVar[tuple[str, ...]] = ("distill",)
    #: what :meth:`output_shape` describes, in error messages
    output_description: ClassVar[str] = "outputs"

    @abstractmethod
    def load_data(self, config: Any) -> Any:
        """The train, calibration and test splits (:class:`pruning.data.DataSplits`) for ``config``
        (a :class:`pruning.data.DataConfig`)."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss: a differentiable scalar, the mean over the batch."""

    @abstractmethod
    def metric_meter(self) -> MetricMeter:
        """A fresh accumulator of :attr:`metrics`."""

    def output_shape(self, splits: Any) -> tuple[int, ...] | None:
        """The shape of a model's output for one input of ``splits`` (None: not checked); a model
        built for the task is refused, one line, when its output differs."""
        return None

    def example_inputs(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """One input batch of ``shape`` (the data's ``(channels, height, width)``) the model accepts."""
        return torch.zeros(1, *shape, device=device)

    def sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of each input: ``float[B]`` (default: :meth:`loss` one input at a time)."""
        return torch.stack([self.loss(o.unsqueeze(0), t.unsqueeze(0)) for o, t in zip(outputs, targets)])

    def summed_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss, what evaluation averages over a pass (default: of :meth:`sample_loss`)."""
        return self.sample_loss(outputs, targets).sum()

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """How far the student's outputs are from the teacher's, softened at ``temperature`` where
        the outputs are logits (default: mean squared error, the temperature unused)."""
        return torch.nn.functional.mse_loss(student, teacher)

    def game_value(self, outputs: torch.Tensor, targets: torch.Tensor, value: str,
                   reference: torch.Tensor | None = None) -> torch.Tensor:
        """Worth of M coalitions from ``outputs: [M, B, ...]``; ``float64[M]``, higher = better.

        ``"loss"``: minus the mean task loss (:meth:`sample_loss`) over the batch; ``"distill"``:
        minus :meth:`distillation_loss` from the unpruned network's outputs ``reference`` (no
        targets read)."""
        self.check_game_value(value)
        if value == "distill":
            if reference is None:
                raise ValueError("value 'distill' needs the unpruned network's outputs (reference)")
            return torch.stack([-self.distillation_loss(o.float(), reference.float(), 1.0) for o in outputs]).double()
        return torch.stack([-self.sample_loss(o.float(), targets).mean() for o in outputs]).double()

    def game_reference(self, outputs: torch.Tensor) -> torch.Tensor:
        """What :meth:`game_value` compares coalitions with, from the unpruned network's outputs."""
        return outputs

    def check_game_value(self, value: str) -> None:
        if value not in self.game_values:
            raise InputError(f"task {self.name!r} has no game value {value!r}; valid: {', '.join(self.game_values)}")

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` called ``name``; an error naming the valid ones otherwise."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise InputError(f"task {self.name!r} has no metric {name!r}; valid: {', '.join(m.name for m in self.metrics)}")

    def check_contract_attributes(self) -> None:
        """The class attributes are consistent: metrics named once, the primary one of them."""
        names = [m.name for m in self.metrics]
        if not names or len(set(names)) != len(names):
            raise InputError(f"task {self.name!r} must name its metrics once each, got {names}")
        if self.primary not in names:
            raise InputError(f"task {self.name!r}: primary metric {self.primary!r} is not one of {', '.join(names)}")


_TASKS: Registry[Task] = Registry("task")


def register_task(name: str):
    """Class decorator: register a :class:`Task` subclass under ``name``."""
    return _TASKS.register_class(name)


def list_tasks() -> list[str]:
    return _TASKS.names()


def task_class(name: str) -> type[Task]:
    return _TASKS.get(name)  # type: ignore[return-value]


class TaskSourceError(InputError):
    """A task named by an import path that cannot be imported or built."""


def create_task(name: str, **kwargs: Any) -> Task:
    """A registered task, or the one an import path ``package.module:factory`` builds (called with
    ``kwargs``); unknown names and options raise with the valid ones."""
    if not is_import_path(name):
        task = _TASKS.create(name, **kwargs)
    else:
        factory = import_attribute(name, "task", TaskSourceError)
        if not callable(factory):
            raise TaskSourceError(f"task {name!r} is a {type(factory).__name__}, not a function or Task class")
        try:
            task = factory(**kwargs)
        except (TypeError, ValueError) as err:
            raise TaskSourceError(f"task {name!r} could not be built: {one_line(err)}") from None
        if not isinstance(task, Task):
            raise TaskSourceError(f"task {name!r} returned {type(task).__name__!r}, not a pruning.tasks.Task")
        if not task.name:
            task.name = name
    task.check_contract_attributes()
    return task


@dataclass(frozen=True)
class TaskSpec:
    """A task as it is recorded (checkpoints, configs, run files): ``name`` (registered or an import
    path) and its ``kwargs``; :meth:`build` creates it, :meth:`check` builds it once to check."""

    name: str = "classification"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"task must be a registered task name or package.module:factory, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping):
            raise InputError(f"task_kwargs must be a mapping, got {type(self.kwargs).__name__}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if not is_import_path(self.name) and self.name not in _TASKS.names():
            raise UnknownNameError(f"unknown task {self.name!r}; valid: {', '.join(list_tasks())} "
                                   "or package.module:factory")

    def build(self) -> Task:
        return create_task(self.name, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> TaskSpec:
        """From a :meth:`to_dict` record; a missing record (older checkpoints) is classification."""
        if not record:
            return cls()
        return cls(name=record.get("name", "classification"), kwargs=record.get("kwargs") or {})
