"""``per_layer``: one pruning ratio per prunable group, an explicit schedule.

Parameters: ``ratio.<group name>`` for every group of ``context.space.select(context.strategy)``
(uniform in the ``layer_ratio`` option's range) plus the shared ones. The most expressive space
and the one that scales worst: its dimension is the number of groups (fine for small nets; use
``concentration`` for deep ones). The MAC reduction is whatever the ratios give, so plans outside
``flops_bounds`` are rejected by ``check_feasible``.

Warm starts: uniform layer ratios, one ratio in every layer found by bisection so that the plan
removes :data:`~search_spaces.WARM_START_QUANTILES` of the ``flops_bounds`` range, for every
criterion, without fine-tuning (ratios clipped into ``layer_ratio``).
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna

from pruning.planning import PruningConfig, plan_pruning
from search_spaces._base import (
    SearchSpace, SpaceContext, TrialPlan, _clip, _float_range, _param, _unique, register_space,
)

#: ratios above this are refused (the default per-layer cap of ``PruningConfig``)
MAX_LAYER_RATIO = PruningConfig(ratio=0.0).max_layer_ratio
PREFIX = "ratio."
#: bisection steps of a warm start's uniform ratio
_BISECTION_STEPS = 30


@register_space("per_layer")
class PerLayerSpace(SearchSpace):
    """An independent ratio for every prunable group."""

    def __init__(
        self,
        layer_ratio: tuple[float, float] = (0.0, 0.8),
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.layer_ratio = _float_range("layer_ratio", layer_ratio, lo=0.0, hi=MAX_LAYER_RATIO)

    def _own_options(self) -> dict[str, Any]:
        return {"layer_ratio": self.layer_ratio}

    @staticmethod
    def parameter_names(context: SpaceContext) -> list[str]:
        """``ratio.<group name>`` for every group the strategy may prune, in model order."""
        return [PREFIX + g.name for g in context.space.select(context.strategy)]

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        for name in self.parameter_names(context):
            trial.suggest_float(name, *self.layer_ratio)
        self._define_shared(trial)

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

    def warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        ratios = _unique([self._uniform_ratio(context, t) for t in self._warm_targets()])
        names = self.parameter_names(context)
        return [
            {**{name: ratio for name in names}, **self._warm_shared(criterion)}
            for criterion in self.criteria for ratio in ratios
        ]

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        schedule = {
            name[len(PREFIX):]: float(_param(params, name)) for name in self.parameter_names(context)
        }
        config = PruningConfig(strategy=context.strategy, schedule=schedule)
        return self._make_plan(params, config)
