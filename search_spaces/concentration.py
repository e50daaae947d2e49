"""``concentration``: a FLOPs target distributed by information concentration.

Parameters: ``flops_reduction`` (the global target), ``alpha`` (fusion weight of entropy vs rank
in the information concentration IC_l) and ``temperature`` (the spread of the layer weights
w_l = (1 - IC_l) ** temperature; 0 is uniform, larger concentrates pruning on the least
informative layers), plus the shared ones. Layer ratios are min(cap, s * w_l) with s fitted to
the target (the ``concentration`` ratio source of ``pruning.planning``).

Warm starts, each at :data:`~search_spaces.WARM_START_QUANTILES` of the target range with no
fine-tuning (values clipped into the space's ranges): first uniform ratios (``temperature`` 0)
for every criterion — the strongest one-shot pipeline measured (docs/benchmarks.md, "Which
criterion") — then the
same as global rankings (``global_ranking``), then plain
information concentration (``temperature`` 1, the weights of ``prunesweep prune --ratios
concentration``) at ``alpha`` 0, 0.5 and 1 with the first criterion.

Three parameters whatever the depth: the space that scales to deep nets. Needs the unpruned
model's activation statistics in ``SpaceContext.stats``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import optuna

from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, register_space
from search_spaces._options import _clip, _float_range, _param, _unique

#: the fusion weights a warm start tries, and the temperature of plain information concentration
WARM_ALPHAS = (0.0, 0.5, 1.0)
PLAIN_TEMPERATURE = 1.0


@register_space("concentration")
class ConcentrationSpace(SearchSpace):
    """Global FLOPs target, layer-wise ratios weighted by information concentration."""

    def __init__(
        self,
        flops_reduction: tuple[float, float] = (0.2, 0.8),
        alpha: tuple[float, float] = (0.0, 1.0),
        temperature: tuple[float, float] = (0.0, 3.0),
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.flops_reduction = _float_range("flops_reduction", flops_reduction, lo=0.0, hi=1.0, hi_open=True)
        self.alpha = _float_range("alpha", alpha, lo=0.0, hi=1.0)
        self.temperature = _float_range("temperature", temperature, lo=0.0, hi=math.inf)

    def _own_options(self) -> dict[str, Any]:
        return {"flops_reduction": self.flops_reduction, "alpha": self.alpha, "temperature": self.temperature}

    @property
    def needs_stats(self) -> bool:
        return True

    def _require_stats(self, context: SpaceContext) -> None:
        if context.stats is None:
            raise ValueError(
                f"search space {self.name!r} needs activation statistics in SpaceContext.stats "
                "(run `prunesweep stats` on the unpruned model)"
            )

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        self._require_stats(context)
        trial.suggest_float("flops_reduction", *self.flops_reduction)
        trial.suggest_float("alpha", *self.alpha)
        trial.suggest_float("temperature", *self.temperature)
        self._define_shared(trial)

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        targets = self._warm_targets(self.flops_reduction)
        uniform = [
            {"flops_reduction": target, "alpha": _clip(WARM_ALPHAS[1], self.alpha),
             "temperature": _clip(0.0, self.temperature), **self._warm_shared(criterion)}
            for criterion in self.criteria for target in targets
        ]
        plain = [
            {"flops_reduction": target, "alpha": alpha, "temperature": _clip(PLAIN_TEMPERATURE, self.temperature),
             **self._warm_shared(self.criteria[0])}
            for alpha in _unique([_clip(a, self.alpha) for a in WARM_ALPHAS]) for target in targets
        ]
        return self._with_global_ranking(uniform) + plain

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        self._require_stats(context)
        plan = self._ratio_plan("concentration", context, float(_param(params, "flops_reduction")),
                                alpha=float(_param(params, "alpha")), temperature=float(_param(params, "temperature")))
        return self._make_plan(params, context, plan.config, plan.ratio_weights)
