"""``per_layer``: one pruning ratio per prunable group, an explicit schedule.

Parameters: ``ratio.<group name>`` for every group of ``context.space.select(context.strategy)``
(uniform in the ``layer_ratio`` option's range) plus the shared ones. The most expressive space
and the one that scales worst: its dimension is the number of groups (fine for small nets; use
``concentration`` for deep ones). The MAC reduction is whatever the ratios give, so plans outside
``flops_bounds`` are rejected by ``check_feasible``.
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna

from pruning.planning import PruningConfig
from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, _float_range, _param, register_space

#: ratios above this are refused (the default per-layer cap of ``PruningConfig``)
MAX_LAYER_RATIO = PruningConfig(ratio=0.0).max_layer_ratio
PREFIX = "ratio."


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

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        schedule = {
            name[len(PREFIX):]: float(_param(params, name)) for name in self.parameter_names(context)
        }
        config = PruningConfig(strategy=context.strategy, schedule=schedule)
        return self._make_plan(params, config)
