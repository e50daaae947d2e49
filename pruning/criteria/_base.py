"""The channel-importance contract every pruning criterion implements.

A criterion maps a model and its prunable :class:`~pruning.structure.groups.ChannelGroup` s to one
importance score per channel. The engine keeps the highest-scoring channels of each group.

Contract (checked for every registered criterion by ``tests/pruning/test_criteria_contract.py``):

* ``score`` returns ``{group.name: scores}`` for every group passed in, where ``scores`` is a
  1-D, finite, float32 CPU tensor of length ``group.size``. Higher means more important.
* Given the same constructor arguments (including ``seed``), model and context, the scores are
  identical.
* The model is left as it was: weights, buffers, ``requires_grad`` flags and train/eval mode.
* A criterion that needs calibration batches or pre-computed activation statistics says so
  through ``needs_calibration`` / ``needs_stats`` and raises :class:`~pruning.errors.InputError`
  when they are missing.

Adding a criterion is one file with a ``@register_criterion("name")`` class plus one import
line in ``pruning/criteria/__init__.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import torch
from torch import nn

from pruning.class_scores import check_class_scores
from pruning.registry import Registry
from pruning.errors import InputError
from pruning.structure.groups import SOURCES, ChannelGroup
from pruning.tasks import Classification, Task

if TYPE_CHECKING:
    from pruning.statistics.options import StatsOptions

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ScoringContext:
    """What data-driven criteria may consume.

    ``calibration``: (inputs, targets) batches from the held-out calibration split.
    ``stats``: pre-computed ``pruning.statistics.ActivationStats`` (keyed by observed module, read per group).
    ``progress``: criteria that run the model (taylor, shapley, snpfi) show a "scoring" bar on stderr.
    ``task``: what the criteria that read targets or outputs (taylor's loss, the games' worth)
    measure (:mod:`pruning.tasks`; default classification).
    """

    calibration: Sequence[Batch] = ()
    stats: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    task: Task = field(default_factory=Classification)


class Criterion(ABC):
    """Base class; see the module docstring for the contract."""

    #: registry name, set by ``register_criterion``
    name: ClassVar[str] = ""
    #: needs ``context.calibration`` batches
    needs_calibration: ClassVar[bool] = False
    #: needs ``context.stats``
    needs_stats: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def score(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        context: ScoringContext,
    ) -> dict[str, torch.Tensor]:
        """Return one importance score per channel for every group (higher = keep)."""

    def required_statistics(self) -> frozenset[str]:
        """Optional statistics the collection must gather for this criterion, beyond the default
        set: ``"chip"`` (CHIP's nuclear norms), ``"map_entropy"`` (the per-map softmax entropies),
        ``"read_inputs"`` (the tensors the consumers of residual-coupled groups read), ``"per_class"``
        (the per-class sums). :func:`statistics_options` turns them into the
        :class:`~pruning.statistics.StatsOptions` callers pass to ``collect_activation_stats``."""
        return frozenset()

    def needs_class_labels(self) -> str | None:
        """Why this criterion, as configured, needs targets that are one class index per input
        (None: it does not); a task without them (``Task.class_labels``) is refused for it."""
        return "per-class statistics" if "per_class" in self.required_statistics() else None

    def check_task(self, task: Task) -> None:
        """Refuse, in one line, a ``task`` that lacks what this criterion reads."""
        reason = self.needs_class_labels()
        if reason is not None and not task.class_labels:
            raise InputError(f"criterion {self.name!r} reads {reason}, which need class labels; task {task.name!r} "
                             "has none (use class_scores: pooled, or a task with class labels)")

    def check_context(self, context: ScoringContext) -> None:
        self.check_task(context.task)
        if self.needs_calibration and not context.calibration:
            raise InputError(f"criterion {self.name!r} needs calibration batches")
        if self.needs_stats and context.stats is None:
            raise InputError(
                f"criterion {self.name!r} needs activation statistics (run `prunesweep stats`)"
            )


#: the optional statistics a criterion may require (:meth:`Criterion.required_statistics`)
OPTIONAL_STATISTICS = ("chip", "map_entropy", "read_inputs", "per_class")


class StatisticsCriterion(Criterion):
    """A criterion read from activation statistics (``context.stats``).

    ``source``: which tensors of a group the statistics are of (:data:`SOURCES`):
    ``"producer"`` (default), each producer's normalised, activated output, averaged over the
    producers of a residual-coupled group; ``"consumer"``, the tensors the group's consumer
    convolutions read (after the residual additions and their activations), averaged over
    them; the statistics must then be collected with ``read_inputs=True``. Inner groups read
    the same tensor either way.

    ``class_scores`` (:data:`~pruning.class_scores.CLASS_SCORES`), for the criteria whose
    ``has_class_scores`` is true: ``"pooled"`` (default), the statistic over all calibration
    images; ``"max"``, the channel's most favourable class's statistic (collected with
    ``per_class=True``), so that a channel only a few classes use is not ranked by the others.
    """

    needs_stats = True
    #: the statistic has a per-class form (``class_scores="max"``)
    has_class_scores: ClassVar[bool] = False

    def __init__(self, seed: int = 0, source: str = "producer", class_scores: str = "pooled") -> None:
        super().__init__(seed)
        if source not in SOURCES:
            raise InputError(f"unknown statistics source {source!r}; valid: {', '.join(SOURCES)}")
        check_class_scores(class_scores)
        if class_scores != "pooled" and not self.has_class_scores:
            raise InputError(f"criterion {self.name!r} has no per-class scores (class_scores={class_scores!r}); "
                             f"criteria with them: {', '.join(criteria_with_class_scores())}")
        self.source = source
        self.class_scores = class_scores

    def required_statistics(self) -> frozenset[str]:
        needed = {"read_inputs"} if self.source == "consumer" else set()
        if self.class_scores != "pooled":
            needed.add("per_class")
        return frozenset(needed)


class ModuleCriterion(Criterion):
    """A criterion computed per producing module; a group's score is the mean over its producers.

    Residual-coupled groups have several producers (e.g. every conv that writes into the same
    residual stream); averaging their per-channel scores ranks the shared channel as a whole.
    """

    @abstractmethod
    def score_module(self, module: nn.Module) -> torch.Tensor:
        """One score per output channel of ``module`` (a Conv2d or Linear)."""

    def score(self, model, groups, context):
        self.check_context(context)
        modules = dict(model.named_modules())
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for group in groups:
                per_producer = [self.score_module(modules[name]).float() for name in group.producers]
                out[group.name] = torch.stack(per_producer).mean(0).cpu()
        return out


_CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str):
    """Class decorator: register a :class:`Criterion` subclass under ``name``."""

    return _CRITERIA.register_class(name)


def create_criterion(name: str, **kwargs) -> Criterion:
    """Instantiate a registered criterion; unknown names or options raise with the valid ones."""
    return _CRITERIA.create(name, **kwargs)


def list_criteria() -> list[str]:
    return _CRITERIA.names()


def criterion_class(name: str) -> type[Criterion]:
    return _CRITERIA.get(name)  # type: ignore[return-value]


def criteria_with_class_scores() -> list[str]:
    """The registered criteria that take ``class_scores`` (:attr:`StatisticsCriterion.has_class_scores`)."""
    return [n for n in list_criteria() if issubclass(cls := criterion_class(n), StatisticsCriterion) and cls.has_class_scores]


def statistics_options(criteria: Iterable[Criterion], base: StatsOptions | None = None) -> StatsOptions:
    """The statistics options these criteria need: ``base`` (default :class:`StatsOptions()
    <pruning.statistics.StatsOptions>`) with each optional statistic (``chip``, ``map_entropy``,
    ``read_inputs``, ``per_class``) on exactly where one of them reads it
    (:meth:`Criterion.required_statistics`); pass it to ``collect_activation_stats``."""
    from pruning.statistics.options import StatsOptions

    needed = frozenset().union(*(c.required_statistics() for c in criteria))
    return (base or StatsOptions()).replace(**{name: name in needed for name in OPTIONAL_STATISTICS})
