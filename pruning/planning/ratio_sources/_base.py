"""The ratio-source contract: how a pruning target is spread over the layers.

A ratio source turns a :class:`RatioTarget` (how much to prune: a FLOPs reduction, a channel
ratio or none; which groups; the width limits) and :class:`RatioInputs` (the pruning space and
what some sources read: activation statistics, SNPFI utilization curves) into a
:class:`RatioPlan`: the :class:`~pruning.planning.PruningConfig` and the optional layer-wise ratio
weights that :func:`~pruning.planning.plan_pruning` takes. ``prunesweep prune --ratios``, a
study's ``ratios:`` and the search spaces all resolve their ratio sources here.

Contract (checked for every registered source by
``tests/pruning/planning/test_ratio_source_contract.py``):

* Options are keyword arguments of the constructor, each with a default, validated there: a bad
  value raises :class:`RatioSourceError` naming the option and the value (and the valid ones
  where they are finite). :func:`create_ratio_source` refuses unknown names and options with the
  valid ones listed. :meth:`RatioSource.options` returns every option, defaults filled in, and
  ``create_ratio_source(name, **source.options())`` makes an equal source.
* :attr:`RatioSource.targets` lists the targets a source takes (``"flops_reduction"``,
  ``"ratio"``, ``"none"``); :meth:`RatioSource.plan` refuses any other, and a source whose
  :attr:`~RatioSource.needs_stats` / :attr:`~RatioSource.needs_utilization` input is missing,
  with a one-line :class:`RatioSourceError`.
* :meth:`RatioSource.plan` is pure: the same target and inputs give the same plan. The plan's
  config carries the target's strategy and width limits; its ratio weights, where there are any,
  name every group the strategy may prune, finite and non-negative. A plan for a
  ``flops_reduction`` meets it within :data:`~pruning.planning.FLOPS_TOLERANCE` (a plan whose
  :attr:`~RatioPlan.needs_scores`, given the channel scores).

Adding a ratio source is one file with a ``@register_ratio_source("name")`` class plus one
import line in ``pruning/planning/ratio_sources/__init__.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from pruning.errors import InputError
from pruning.planning.schedule import PruningConfig, plan_pruning
from pruning.planning.widths import WidthGrid
from pruning.registry import Registry, accepted_options
from pruning.structure.engine import PruningSpace
from pruning.structure.groups import ChannelGroup

__all__ = [
    "TARGETS", "RatioSourceError", "RatioTarget", "RatioInputs", "RatioPlan", "RatioSource",
    "register_ratio_source", "create_ratio_source", "list_ratio_sources", "ratio_source_class", "ratio_source_options",
]

#: the kinds of target a ratio source may take (:attr:`RatioSource.targets`)
TARGETS = ("flops_reduction", "ratio", "none")


class RatioSourceError(InputError):
    """A ratio source that cannot serve: ``option`` names the bad option (or ``target``,
    ``stats``, ``utilization``) and ``reason`` says what is wrong, so that a caller can name it in
    its own words (a command-line option, a config key path)."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option} {reason}")
        self.option = option
        self.reason = reason


@dataclass(frozen=True)
class RatioTarget:
    """How much to prune and within which limits: at most one of ``flops_reduction`` (fraction of
    MACs removed) and ``ratio`` (fraction of channels removed); neither for the sources that set
    the amount themselves. ``strategy`` and the width limits are those of
    :class:`~pruning.planning.PruningConfig`."""

    flops_reduction: float | None = None
    ratio: float | None = None
    strategy: str = "full"
    max_layer_ratio: float = 0.9
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        if self.flops_reduction is not None and self.ratio is not None:
            raise RatioSourceError("target", "takes one of flops_reduction and ratio, got both")
        self.config(**(self.amount() if self.kind != "none" else {"ratio": 0.0}))  # checks every field

    @property
    def kind(self) -> str:
        """Which target this is, one of :data:`TARGETS`."""
        return "flops_reduction" if self.flops_reduction is not None else "ratio" if self.ratio is not None else "none"

    def config(self, **what: Any) -> PruningConfig:
        """A :class:`~pruning.planning.PruningConfig` with this target's strategy and width limits and
        ``what`` (the allocation, the amount or a schedule)."""
        return PruningConfig(strategy=self.strategy, max_layer_ratio=self.max_layer_ratio,
                             min_channels=self.min_channels, round_to=self.round_to, **what)

    @property
    def grid(self) -> WidthGrid:
        """The widths a layer may keep under this target's cap, floor and rounding."""
        return WidthGrid(cap=self.max_layer_ratio, min_channels=self.min_channels, round_to=self.round_to)

    def amount(self) -> dict[str, float]:
        """The target as :class:`~pruning.planning.PruningConfig` keywords (``{"ratio": ...}`` or
        ``{"flops_reduction": ...}``)."""
        return {"ratio": self.ratio} if self.ratio is not None else {"flops_reduction": self.flops_reduction}


@dataclass(frozen=True)
class RatioInputs:
    """What a ratio source reads: the unpruned model's ``space``; ``stats``, its activation
    statistics (:attr:`RatioSource.needs_stats`); ``utilization``, per group SNPFI's utilization
    curve U(k), k = 0..size (:attr:`RatioSource.needs_utilization`)."""

    space: PruningSpace
    stats: Any = None
    utilization: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class RatioPlan:
    """What :func:`~pruning.planning.plan_pruning` takes: ``config`` and the layer-wise
    ``ratio_weights`` (None: none)."""

    config: PruningConfig
    ratio_weights: Mapping[str, float] | None = None

    @property
    def needs_scores(self) -> bool:
        """Whether the channel counts follow from the channel scores (the global ranking)."""
        return self.config.allocation == "global" and self.config.schedule is None

    def keep(self, space: PruningSpace, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
        """Channels kept per group (``scores`` only for a plan that :attr:`needs_scores`)."""
        return plan_pruning(space, scores or {}, self.config, self.ratio_weights)


class RatioSource(ABC):
    """Base class; see the module docstring for the contract."""

    #: registry name, set by ``register_ratio_source``
    name: ClassVar[str] = ""
    #: the targets :meth:`plan` takes (:data:`TARGETS`)
    targets: ClassVar[tuple[str, ...]] = ("flops_reduction", "ratio")
    #: reads ``RatioInputs.stats``
    needs_stats: ClassVar[bool] = False
    #: reads ``RatioInputs.utilization``
    needs_utilization: ClassVar[bool] = False

    def options(self) -> dict[str, Any]:
        """Every option with its value (defaults filled in). Default: no options."""
        return {}

    def plan(self, target: RatioTarget, inputs: RatioInputs) -> RatioPlan:
        """The plan of ``target`` (checked against :attr:`targets` and the inputs it needs)."""
        if target.kind not in self.targets:
            raise RatioSourceError("target", f"of ratio source {self.name!r} must be "
                                   f"{' or '.join(self.targets)}, got {target.kind}")
        if self.needs_stats and inputs.stats is None:
            raise RatioSourceError("stats", f"missing: ratio source {self.name!r} reads the unpruned model's "
                                   "activation statistics (run `prunesweep stats`)")
        if self.needs_utilization and inputs.utilization is None:
            raise RatioSourceError("utilization", f"missing: ratio source {self.name!r} reads SNPFI's "
                                   "utilization curves")
        return self.make_plan(target, inputs, inputs.space.select(target.strategy))

    @abstractmethod
    def make_plan(self, target: RatioTarget, inputs: RatioInputs, groups: list[ChannelGroup]) -> RatioPlan:
        """The plan of a checked ``target``; ``groups``: those the strategy may prune."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.options()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


_SOURCES: Registry[RatioSource] = Registry("ratio source")


def register_ratio_source(name: str):
    """Class decorator: register a :class:`RatioSource` subclass under ``name``."""

    return _SOURCES.register_class(name)


def create_ratio_source(name: str, **options: Any) -> RatioSource:
    """Instantiate a registered ratio source; unknown names or options raise with the valid ones."""
    return _SOURCES.create(name, **options)


def list_ratio_sources() -> list[str]:
    return _SOURCES.names()


def ratio_source_class(name: str) -> type[RatioSource]:
    return _SOURCES.get(name)  # type: ignore[return-value]


def ratio_source_options(name: str) -> list[str]:
    """The option names of a registered source."""
    return accepted_options(ratio_source_class(name)) or []
