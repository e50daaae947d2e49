"""``snpfi``: SNPFI's automatic layer sparsity at a sampled retention level.

Parameter: ``tau`` (uniform in the ``tau`` option's range) plus the shared ones. The plan is the
``snpfi`` ratio source's (``pruning.planning``) without a target: each group keeps k* channels,
the smallest k >= 1 whose top-k filters reach a utilization U(k) >= tau
(``pruning.games.sparsity_from_curve``), i.e. the layer's ratio is 1 - k*/n, capped at the
default per-layer cap (0.9). An explicit schedule: the MAC reduction follows from tau, and
plans outside ``flops_bounds`` are rejected by ``check_feasible``.

Warm starts: SNPFI's automatic sparsity at its default retention (``tau`` 0.95, the default of
the ``snpfi`` ratio source and ``prunesweep prune --tau``, clipped into the ``tau``
range) for every criterion, without fine-tuning.

Needs ``SpaceContext.utilization``: per group, U(k) for k = 0..size, computed once per sweep from
the unpruned model (Shapley importance of the group's filters).
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna
import torch

from pruning.planning import create_ratio_source
from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, register_space
from search_spaces._options import _clip, _float_range, _param

#: SNPFI's own retention level: the ``snpfi`` ratio source's default, the one-shot pipeline's
DEFAULT_TAU = create_ratio_source("snpfi").options()["tau"]


@register_space("snpfi")
class SnpfiSpace(SearchSpace):
    """Per-layer sparsity from utilization curves at one sampled retention level tau."""

    def __init__(
        self,
        tau: tuple[float, float] = (0.8, 0.99),
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.tau = _float_range("tau", tau, lo=0.0, hi=1.0, positive=True)

    def _own_options(self) -> dict[str, Any]:
        return {"tau": self.tau}

    @property
    def needs_utilization(self) -> bool:
        return True

    @property
    def flops_targeted(self) -> bool:
        return False  # tau, not a FLOPs target, sets the sparsity

    def _curves(self, context: SpaceContext) -> dict[str, torch.Tensor]:
        """The utilization curve of every group the strategy may prune, checked."""
        if context.utilization is None:
            raise ValueError(
                f"search space {self.name!r} needs utilization curves in SpaceContext.utilization"
            )
        curves = {}
        for group in context.space.select(context.strategy):
            if group.name not in context.utilization:
                raise ValueError(
                    f"search space {self.name!r}: no utilization curve for layer {group.name!r}"
                )
            curve = torch.as_tensor(context.utilization[group.name])
            if curve.dim() != 1 or curve.numel() != group.size + 1:
                raise ValueError(
                    f"search space {self.name!r}: the utilization curve of layer {group.name!r} must be "
                    f"1-D of length {group.size + 1}, got shape {tuple(curve.shape)}"
                )
            curves[group.name] = curve
        return curves

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        self._curves(context)
        trial.suggest_float("tau", *self.tau)
        self._define_shared(trial)

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        tau = _clip(DEFAULT_TAU, self.tau)
        return [{"tau": tau, **self._warm_shared(criterion)} for criterion in self.criteria]

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        self._curves(context)
        plan = self._ratio_plan("snpfi", context, tau=float(_param(params, "tau")))
        return self._make_plan(params, context, plan.config)
