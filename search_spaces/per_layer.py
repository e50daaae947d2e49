"""``per_layer``: one parameter per prunable group.

``prior: none`` (the default): an explicit schedule. Parameters ``ratio.<group name>`` for every
group of ``context.space.select(context.strategy)`` (uniform in the ``layer_ratio`` option's
range) plus the shared ones. The most expressive space and the one that scales worst: its
dimension is the number of groups and the MAC reduction is whatever the ratios give, so plans
outside ``flops_bounds`` are rejected by ``check_feasible`` (at 50+ layers most random plans sit
near the middle of the range and the extremes are rarely reached).

``prior: uniform`` or ``prior: concentration``: FLOPs-targeted, for deep nets. Parameters
``flops_reduction`` (uniform in the ``flops_reduction`` option's range) and one multiplier
``mult.<group name>`` per group (uniform in the narrow ``multiplier`` range, default [0.5, 1.5])
on top of a prior layer weight: 1 (``uniform``) or plain information concentration
(``concentration``: the ``concentration`` ratio source's weights at alpha 0.5, temperature 1;
needs ``SpaceContext.stats``). Layer ratios are min(cap, s * prior_l * mult_l) with s fitted to the
target by the proportional allocation, so every plan meets its FLOPs target within
``FLOPS_TOLERANCE`` however many layers there are, and each multiplier only bends the prior.

Warm starts, every criterion, without fine-tuning: ``prior: none``: uniform layer ratios, one
ratio in every layer found by bisection so that the plan removes
:data:`~search_spaces.WARM_START_QUANTILES` of the ``flops_bounds`` range (ratios clipped into
``layer_ratio``); otherwise every multiplier 1 (clipped into ``multiplier``), i.e. the prior
itself, at those quantiles of the target range, then (``global_ranking``) the same as global
rankings.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import optuna

from pruning.planning import PruningConfig, plan_pruning
from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, register_space
from search_spaces._options import _clip, _float_range, _param, _unique

#: ratios above this are refused (the default per-layer cap of ``PruningConfig``)
MAX_LAYER_RATIO = PruningConfig(ratio=0.0).max_layer_ratio
PREFIX = "ratio."
MULT_PREFIX = "mult."
PRIORS = ("none", "uniform", "concentration")
#: bisection steps of a warm start's uniform ratio
_BISECTION_STEPS = 30


@register_space("per_layer")
class PerLayerSpace(SearchSpace):
    """An independent ratio (or a multiplier on a prior weight) for every prunable group."""

    def __init__(
        self,
        layer_ratio: tuple[float, float] = (0.0, 0.8),
        prior: str = "none",
        flops_reduction: tuple[float, float] = (0.2, 0.8),
        multiplier: tuple[float, float] = (0.5, 1.5),
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.layer_ratio = _float_range("layer_ratio", layer_ratio, lo=0.0, hi=MAX_LAYER_RATIO)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        self.prior = prior
        self.flops_reduction = _float_range("flops_reduction", flops_reduction, lo=0.0, hi=1.0, hi_open=True)
        self.multiplier = _float_range("multiplier", multiplier, lo=0.0, hi=math.inf, positive=True)

    def _own_options(self) -> dict[str, Any]:
        return {
            "layer_ratio": self.layer_ratio, "prior": self.prior,
            "flops_reduction": self.flops_reduction, "multiplier": self.multiplier,
        }

    @property
    def needs_stats(self) -> bool:
        return self.prior == "concentration"

    @property
    def flops_targeted(self) -> bool:
        return self.prior != "none"  # an explicit schedule's MACs follow from its ratios

    @staticmethod
    def parameter_names(context: SpaceContext, prefix: str = PREFIX) -> list[str]:
        """``<prefix><group name>`` (default ``ratio.``) for every group the strategy may prune, in model order."""
        return [prefix + g.name for g in context.space.select(context.strategy)]

    def _layer_names(self, context: SpaceContext) -> list[str]:
        return self.parameter_names(context, PREFIX if self.prior == "none" else MULT_PREFIX)

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        if self.prior == "none":
            for name in self._layer_names(context):
                trial.suggest_float(name, *self.layer_ratio)
        else:
            self._prior(context)  # fails early without statistics
            trial.suggest_float("flops_reduction", *self.flops_reduction)
            for name in self._layer_names(context):
                trial.suggest_float(name, *self.multiplier)
        self._define_shared(trial)

    def _prior(self, context: SpaceContext) -> dict[str, float]:
        """The prior weight of every group the strategy may prune: the layer-wise weights of the
        ratio source named by ``prior`` (1 everywhere where it has none)."""
        if self.prior == "concentration" and context.stats is None:
            raise ValueError(
                f"search space {self.name!r} with prior {self.prior!r} needs activation statistics in "
                "SpaceContext.stats (run `prunesweep stats` on the unpruned model)"
            )
        plan = self._ratio_plan(self.prior, context, self.flops_reduction[0])
        if plan.ratio_weights is not None:
            return dict(plan.ratio_weights)
        return {g.name: 1.0 for g in context.space.select(context.strategy)}

    def _uniform_ratio(self, context: SpaceContext, target: float) -> float:
        """The one layer ratio (within ``layer_ratio``) whose plan removes about ``target`` of the MACs."""
        names = [g.name for g in context.space.select(context.strategy)]

        def reduction(ratio: float) -> float:
            config = PruningConfig(strategy=context.strategy, schedule={n: ratio for n in names})
            return context.space.reduction(plan_pruning(context.space, {}, config))

        low, high = self.layer_ratio
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if reduction(middle) < target else (low, middle)
        return _clip(round((low + high) / 2, 4), self.layer_ratio)

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        names = self._layer_names(context)
        if self.prior != "none":
            one = _clip(1.0, self.multiplier)
            return self._with_global_ranking([
                {"flops_reduction": target, **{name: one for name in names}, **self._warm_shared(criterion)}
                for criterion in self.criteria for target in self._warm_targets(self.flops_reduction)
            ])
        ratios = _unique([self._uniform_ratio(context, t) for t in self._warm_targets()])
        return [
            {**{name: ratio for name in names}, **self._warm_shared(criterion)}
            for criterion in self.criteria for ratio in ratios
        ]

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        if self.prior == "none":
            schedule = {name[len(PREFIX):]: float(_param(params, name)) for name in self._layer_names(context)}
            return self._make_plan(params, context, PruningConfig(strategy=context.strategy, schedule=schedule))
        prior = self._prior(context)
        weights = {
            name[len(MULT_PREFIX):]: prior[name[len(MULT_PREFIX):]] * float(_param(params, name))
            for name in self._layer_names(context)
        }
        config = self._ratio_plan("uniform", context, float(_param(params, "flops_reduction"))).config
        return self._make_plan(params, context, config, weights)
