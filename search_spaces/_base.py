"""The search-space contract: an Optuna trial in, a pruning plan out.

A :class:`SearchSpace` describes the hyper-parameters one sweep explores (the criterion, how the
pruning is distributed over the layers, fine-tuning settings) and turns a set of sampled values
into a :class:`TrialPlan` that ``pruning`` can carry out. It uses only ``pruning``'s public API
and knows nothing of Ray, Tune or MLflow: the orchestrator builds one :class:`SpaceContext` per
sweep, has :meth:`SearchSpace.define` suggest each trial's parameters and :meth:`SearchSpace.to_plan`
turn them into a plan. The layer-wise ratios come from ``pruning.planning``'s ratio sources
(:func:`~pruning.planning.create_ratio_source`), the ones ``prunesweep prune --ratios`` and a
study's ``ratios:`` use.

Contract (checked for every registered space by ``tests/search_spaces/test_spaces.py`` and
``test_round_to.py``):

* Options (parameter bounds) are constructor arguments with defaults, validated in ``__init__``;
  a bad value raises ``ValueError`` naming the option and the value. Unknown options and space
  names are refused by :func:`create_search_space` with the valid ones listed.
* :meth:`SearchSpace.define` is define-by-run: it calls ``trial.suggest_*`` once for every
  parameter, with names that depend only on the space's options and the context (so they are
  the same in every trial of a sweep). Shared parameters come from :meth:`SearchSpace._define_shared`:
  ``criterion``, ``finetune_lr``, ``finetune_epochs`` and ``weight_decay``, and in a space with
  a FLOPs target (:attr:`SearchSpace.flops_targeted`) and ``global_ranking`` on, ``allocation``:
  ``layerwise`` (the space's own layer ratios) or ``global`` (one ranking of every channel by its
  normalised score to the sampled target: the space's layer parameters are then unused), and
  with ``round_to`` searched (a list of choices), ``round_to``.
* :meth:`SearchSpace.to_plan` is pure: the same params and context give the same plan, so a plan
  can be rebuilt from a finished trial's ``params`` (e.g. an MLflow run's logged parameters).
* :meth:`SearchSpace.warm_starts` lists the one-shot schedules in the space's own parameters:
  complete param dicts, inside the space's bounds, deterministic, that :meth:`SearchSpace.to_plan`
  accepts. A sweep runs them as its first trials. A space lists them in ``_warm_starts``
  (optional; default: none); with ``allocation`` sampled they include the global ranking of
  every criterion at the warm-start targets. With ``round_to`` searched, ``warm_starts`` lists
  each of them once per choice, interleaved (the first at every choice, then the second, ...).
* :attr:`SearchSpace.needs_stats` / :attr:`SearchSpace.needs_utilization` (optional; default
  False) say whether :meth:`SearchSpace.to_plan` reads ``SpaceContext.stats`` / ``utilization``,
  so that a sweep computes them only when its space (with its options) or a criterion needs them.
* :meth:`SearchSpace.check_feasible` rejects plans before any training: it returns ``None`` for a
  plan whose channel counts can be planned and whose MAC reduction lies within ``flops_bounds``
  (and, for a FLOPs-targeted plan, within :data:`~pruning.planning.FLOPS_TOLERANCE` of the
  target), else a one-line reason. A global-ranking plan's channel counts follow from the scores,
  so only its target is checked (against ``flops_bounds`` and the largest reduction the plan's
  widths reach); the allocation itself meets it.

Adding a space is one file with a ``@register_space("name")`` class plus one import line in
``search_spaces/__init__.py``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar, Mapping, Sequence

import optuna

from pruning.registry import Registry
from pruning.structure import PruningError
from pruning.planning import (
    FLOPS_TOLERANCE, PruningConfig, RatioInputs, RatioPlan, RatioTarget, create_ratio_source, reachable_reduction,
)
from pruning.recovery import RecoveryRecipe
from search_spaces._options import _choice, _clip, _criteria, _float_range, _int_range, _param, _round_to, _unique
from search_spaces._plan import SpaceContext, TrialPlan

__all__ = [
    "SpaceContext",
    "TrialPlan",
    "SearchSpace",
    "register_space",
    "create_search_space",
    "list_search_spaces",
    "search_space_class",
    "WARM_START_QUANTILES",
    "ALLOCATION_CHOICES",
]

#: where warm starts put their FLOPs targets: these fractions of the space's FLOPs range (its
#: target range intersected with ``flops_bounds``)
WARM_START_QUANTILES = (0.25, 0.5, 0.75)
#: the choices of the ``allocation`` parameter: the space's layer ratios, or one global ranking
ALLOCATION_CHOICES = ("layerwise", "global")
#: the parameters every space suggests (``SearchSpace._define_shared``)
_SHARED_PARAMS = ("criterion", "finetune_lr", "finetune_epochs", "weight_decay", "allocation", "round_to")


# ---------------------------------------------------------------------------------------------
# the base class


class SearchSpace(ABC):
    """Base class; see the module docstring for the contract.

    Shared options:

    criteria: the criteria to choose from (categorical parameter ``criterion``).
    finetune_lr: (low, high) of the fine-tuning learning rate, log-uniform.
    finetune_epochs: (low, high) of the fine-tuning epochs, integers.
    weight_decay: (low, high) of the fine-tuning weight decay, log-uniform.
    flops_bounds: (low, high) of the MAC reductions this space may produce; plans outside are
        infeasible (:meth:`check_feasible`).
    global_ranking: in a space with a FLOPs target, also sample ``allocation`` (layer-wise or one
        global ranking, :data:`ALLOCATION_CHOICES`), and warm-start with the global ranking of every
        criterion (the strongest one-shot pipeline at some targets: the full report of
        benchmarks/results/*_sweep_vs_oneshot_*.json, benchmarks/README.md). Spaces
        without a FLOPs target (``snpfi``, ``per_layer`` with ``prior: none``) have nothing to rank to.
    round_to: every plan keeps channel counts that are multiples of this (``PruningConfig.round_to``;
        8 or 16 for fast inference; 1: any count), or a list of at least two, e.g. ``[1, 8, 16]``,
        to search it (categorical parameter ``round_to``): are fast widths worth their accuracy?

    Subclasses take their own options and pass ``**shared`` on; the registry collects the valid
    option names through the ``__init__`` chain and refuses unknown ones with that list.
    """

    #: registry name, set by ``register_space``
    name: ClassVar[str] = ""

    # long signature: the keyword options are the space's config keys (``register_space`` lists
    # and checks them through the ``__init__`` chain), as a criterion's are
    def __init__(
        self,
        *,
        criteria: Sequence[str] = ("l1",),
        finetune_lr: tuple[float, float] = (1e-3, 5e-2),
        finetune_epochs: tuple[int, int] = (0, 1),
        weight_decay: tuple[float, float] = (1e-5, 1e-3),
        flops_bounds: tuple[float, float] = (0.1, 0.9),
        global_ranking: bool = True,
        round_to: int | Sequence[int] = 1,
    ) -> None:
        self.criteria = _criteria(criteria)
        self.finetune_lr = _float_range("finetune_lr", finetune_lr, lo=0.0, hi=math.inf, positive=True)
        self.finetune_epochs = _int_range("finetune_epochs", finetune_epochs)
        self.weight_decay = _float_range("weight_decay", weight_decay, lo=0.0, hi=math.inf, positive=True)
        self.flops_bounds = _float_range("flops_bounds", flops_bounds, lo=0.0, hi=1.0)
        if not isinstance(global_ranking, bool):
            raise ValueError(f"global_ranking must be true or false, got {global_ranking!r}")
        self.global_ranking = global_ranking
        self.round_to = _round_to(round_to)

    # -- options ---------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The validated options (ranges as tuples), shared ones included: for logging."""
        return {
            **self._own_options(),
            "criteria": self.criteria,
            "finetune_lr": self.finetune_lr,
            "finetune_epochs": self.finetune_epochs,
            "weight_decay": self.weight_decay,
            "flops_bounds": self.flops_bounds,
            "global_ranking": self.global_ranking,
            "round_to": self.round_to,
        }

    @abstractmethod
    def _own_options(self) -> dict[str, Any]:
        """The space's own validated options."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    # -- sampling --------------------------------------------------------------------------

    @abstractmethod
    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        """Suggest every parameter of this space on ``trial`` (define-by-run)."""

    @abstractmethod
    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        """The plan for sampled ``params`` (pure: same params and context, same plan)."""

    def _define_shared(self, trial: optuna.Trial) -> None:
        """Suggest ``criterion``, ``finetune_lr``, ``finetune_epochs``, ``weight_decay`` and, where
        sampled, ``allocation`` and ``round_to``."""
        trial.suggest_categorical("criterion", list(self.criteria))
        trial.suggest_float("finetune_lr", *self.finetune_lr, log=True)
        trial.suggest_int("finetune_epochs", *self.finetune_epochs)
        trial.suggest_float("weight_decay", *self.weight_decay, log=True)
        if self.ranks_globally:
            trial.suggest_categorical("allocation", list(ALLOCATION_CHOICES))
        if self.searches_round_to:
            trial.suggest_categorical("round_to", list(self.round_to_choices))

    @property
    def needs_stats(self) -> bool:
        """Whether this space (with its options) reads ``SpaceContext.stats``: a sweep computes the
        activation statistics of the unpruned model for it. Optional hook; default: False."""
        return False

    @property
    def flops_targeted(self) -> bool:
        """Whether the space samples one FLOPs target (``flops_reduction``) and fits its layer
        ratios to it; only such a space can offer the global ranking. Optional hook; default True."""
        return True

    @property
    def ranks_globally(self) -> bool:
        """Whether ``allocation`` is sampled: ``global_ranking`` on in a FLOPs-targeted space."""
        return self.global_ranking and self.flops_targeted

    @property
    def round_to_choices(self) -> tuple[int, ...]:
        """The width multiples a plan of this space may use: ``(round_to,)`` when fixed."""
        return self.round_to if isinstance(self.round_to, tuple) else (self.round_to,)

    @property
    def searches_round_to(self) -> bool:
        """Whether ``round_to`` is sampled (given as a list of choices)."""
        return len(self.round_to_choices) > 1

    @property
    def needs_utilization(self) -> bool:
        """Whether this space reads ``SpaceContext.utilization`` (SNPFI curves). Optional hook;
        default: False."""
        return False

    def warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        """The one-shot schedules expressed in this space's parameters: complete param dicts (every
        name :meth:`define` suggests), inside the space's bounds, the same for the same options and
        context. A sweep runs them as its first trials (``sweep.warm_start``). With ``round_to``
        searched, each schedule at every choice in turn, so that a sweep that runs only the first
        few still compares rounded and unrounded widths."""
        starts = self._warm_starts(context)
        if not self.searches_round_to:
            return starts
        return [{**start, "round_to": choice} for start in starts for choice in self.round_to_choices]

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        """The space's warm starts in its own and the shared parameters, ``round_to`` aside (see
        :meth:`warm_starts`). Optional hook; default: none."""
        return []

    def plan_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``params`` that decides the plan: all of it, but for a global ranking,
        whose layer parameters are unused (two trials that differ only there run the same plan,
        and a sweep refines it once)."""
        if self.ranks_globally and params.get("allocation") == ALLOCATION_CHOICES[1]:
            return {k: v for k, v in params.items() if k in _SHARED_PARAMS or k == "flops_reduction"}
        return dict(params)

    def _warm_shared(self, criterion: str) -> dict[str, Any]:
        """The shared parameters of a warm start: a one-shot pipeline does not fine-tune (the
        lowest ``finetune_epochs``); learning rate and weight decay are the recipe's defaults,
        clipped into their ranges."""
        defaults = RecoveryRecipe()
        return {
            "criterion": criterion,
            "finetune_lr": _clip(defaults.finetune_lr, self.finetune_lr),
            "finetune_epochs": self.finetune_epochs[0],
            "weight_decay": _clip(defaults.weight_decay, self.weight_decay),
            **({"allocation": ALLOCATION_CHOICES[0]} if self.ranks_globally else {}),
        }

    def _with_global_ranking(self, starts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``starts`` followed, where ``allocation`` is sampled, by each of them as a global
        ranking (the same criterion and target; the layer parameters are then unused)."""
        if not self.ranks_globally:
            return starts
        return starts + [{**start, "allocation": ALLOCATION_CHOICES[1]} for start in starts]

    def _warm_targets(self, bounds: tuple[float, float] | None = None) -> list[float]:
        """FLOPs-reduction targets at :data:`WARM_START_QUANTILES` of ``bounds`` (default:
        ``flops_bounds``) intersected with ``flops_bounds``, each inside ``bounds``."""
        bounds = bounds or self.flops_bounds
        low, high = max(bounds[0], self.flops_bounds[0]), min(bounds[1], self.flops_bounds[1])
        if low > high:  # disjoint ranges: every target is infeasible anyway; stay inside bounds
            low, high = bounds
        return _unique([_clip(round(low + q * (high - low), 4), bounds) for q in WARM_START_QUANTILES])

    @staticmethod
    def _ratio_plan(source: str, context: SpaceContext, flops_reduction: float | None = None,
                    **options: Any) -> RatioPlan:
        """The plan of the ratio source ``source`` (:func:`~pruning.planning.create_ratio_source`)
        with ``options`` at ``flops_reduction`` (None: the amount the source sets itself), on
        ``context``'s groups, statistics and utilization curves."""
        return create_ratio_source(source, **options).plan(
            RatioTarget(flops_reduction=flops_reduction, strategy=context.strategy),
            RatioInputs(context.space, stats=context.stats, utilization=context.utilization),
        )

    def _make_plan(
        self,
        params: Mapping[str, Any],
        context: SpaceContext,
        config: PruningConfig,
        ratio_weights: Mapping[str, float] | None = None,
    ) -> TrialPlan:
        """A plan with the shared parameters read from ``params`` (all of ``params`` logged); with
        ``allocation: global`` the FLOPs target of ``config`` is met by one global ranking (the
        ``global`` ratio source); the widths are multiples of the sampled or fixed ``round_to``."""
        if self.ranks_globally and _param(params, "allocation") == ALLOCATION_CHOICES[1]:
            config = self._ratio_plan("global", context, config.flops_reduction).config
            ratio_weights = None
        round_to = _choice(params, "round_to", self.round_to_choices) if self.searches_round_to else self.round_to
        config = replace(config, round_to=round_to)
        return TrialPlan(
            criterion=str(_param(params, "criterion")),
            config=config,
            ratio_weights=None if ratio_weights is None else dict(ratio_weights),
            finetune_lr=float(_param(params, "finetune_lr")),
            finetune_epochs=int(_param(params, "finetune_epochs")),
            weight_decay=float(_param(params, "weight_decay")),
            params=dict(params),
        )

    # -- feasibility -----------------------------------------------------------------------

    def check_feasible(self, plan: TrialPlan, context: SpaceContext) -> str | None:
        """``None`` if ``plan`` can be trained, else a one-line reason (no training involved)."""
        low, high = self.flops_bounds
        if plan.needs_scores:
            target = plan.config.flops_reduction
            if not low <= target <= high:
                return f"FLOPs reduction target {target:.3f} is outside flops_bounds [{low}, {high}]"
            # the ranking meets any target its widths (the plan's round_to) can reach
            most = reachable_reduction(context.space, context.space.select(plan.config.strategy), plan.config.grid)
            if target > most + FLOPS_TOLERANCE / 2:
                return (f"FLOPs reduction target {target:.3f} cannot be met: at most {most:.3f} with widths "
                        f"multiples of {plan.config.round_to}")
            return None
        try:
            keep = plan.keep(context)
        except PruningError as err:  # InfeasibleTargetError included
            return str(err)
        reduction = context.space.reduction(keep)
        target = plan.config.flops_reduction
        if target is not None and abs(reduction - target) > FLOPS_TOLERANCE:
            return (
                f"FLOPs reduction target {target:.3f} missed: the integer channel counts reach "
                f"{reduction:.3f} (tolerance {FLOPS_TOLERANCE})"
            )
        if not low <= reduction <= high:
            return f"planned FLOPs reduction {reduction:.3f} is outside flops_bounds [{low}, {high}]"
        return None


# ---------------------------------------------------------------------------------------------
# registry

_SPACES: Registry[SearchSpace] = Registry("search space")


def register_space(name: str):
    """Class decorator: register a :class:`SearchSpace` subclass under ``name``."""

    return _SPACES.register_class(name)


def create_search_space(name: str, **options: Any) -> SearchSpace:
    """Instantiate a registered space; unknown names or options raise with the valid ones listed.

    Ranges may be given as lists (as YAML reads them): ``create_search_space(**config["space"])``.
    """
    return _SPACES.create(name, **options)


def list_search_spaces() -> list[str]:
    return _SPACES.names()


def search_space_class(name: str) -> type[SearchSpace]:
    return _SPACES.get(name)  # type: ignore[return-value]
