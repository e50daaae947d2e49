"""``uniform``: one global FLOPs-reduction target, the same ratio in every prunable layer.

Parameters: ``flops_reduction`` (uniform in the ``flops_reduction`` option's range) plus the
shared ones. Warm starts: every criterion at :data:`~search_spaces.WARM_START_QUANTILES` of
the target range (within ``flops_bounds``), without fine-tuning: the one-shot uniform pipelines
of ``prunesweep compare``; then (``global_ranking``) the same as global rankings. The plan is the ``uniform`` ratio source's (``pruning.planning``): equal
per-layer ratios scaled by bisection to the target, then refined channel by channel.
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna

from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, register_space
from search_spaces._options import _float_range, _param


@register_space("uniform")
class UniformSpace(SearchSpace):
    """One FLOPs target, uniform allocation: the baseline every other space is compared with."""

    def __init__(
        self,
        flops_reduction: tuple[float, float] = (0.2, 0.8),
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.flops_reduction = _float_range("flops_reduction", flops_reduction, lo=0.0, hi=1.0, hi_open=True)

    def _own_options(self) -> dict[str, Any]:
        return {"flops_reduction": self.flops_reduction}

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        trial.suggest_float("flops_reduction", *self.flops_reduction)
        self._define_shared(trial)

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        return self._with_global_ranking([
            {"flops_reduction": target, **self._warm_shared(criterion)}
            for criterion in self.criteria for target in self._warm_targets(self.flops_reduction)
        ])

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        plan = self._ratio_plan("uniform", context, float(_param(params, "flops_reduction")))
        return self._make_plan(params, context, plan.config)
