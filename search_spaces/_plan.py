"""What a sweep knows before its first trial (:class:`SpaceContext`) and one trial's recipe
(:class:`TrialPlan`): the values a :class:`~search_spaces.SearchSpace` plans from and the plan it makes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from pruning.planning import PruningConfig, plan_pruning
from pruning.statistics import ActivationStats
from pruning.structure import PruningError, PruningSpace


@dataclass(frozen=True)
class SpaceContext:
    """What a sweep knows before its first trial.

    space: the unpruned model's prunable groups and MAC model.
    strategy: which groups may be pruned (``full`` or ``inner``, see ``PruningSpace.select``).
    stats: activation statistics of the unpruned model (the ``concentration`` space needs them).
    utilization: per group name, SNPFI's utilization curve U(k) for k = 0..size, a 1-D tensor of
        length ``size + 1`` rising to 1 (the ``snpfi`` space needs it); computed once per sweep.
    """

    space: PruningSpace
    strategy: str = "full"
    stats: ActivationStats | None = None
    utilization: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class TrialPlan:
    """One trial's recipe: how to score, how much to prune where, how to fine-tune.

    ``config`` and ``ratio_weights`` go to ``pruning.planning.plan_pruning``; ``params`` are the
    sampled values the plan was built from (log them; :meth:`SearchSpace.to_plan` rebuilds the plan).
    """

    criterion: str
    config: PruningConfig
    ratio_weights: dict[str, float] | None
    finetune_lr: float
    finetune_epochs: int
    weight_decay: float
    params: dict[str, Any]

    @property
    def needs_scores(self) -> bool:
        """Whether the channel counts follow from the channel scores (the ``global`` allocation):
        then only a trial that has scored the channels can plan them."""
        return self.config.allocation == "global"

    def keep(self, context: SpaceContext, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
        """Channels kept per group. Raises ``PruningError`` (``InfeasibleTargetError``) if unplannable.

        ``scores`` (per group, one per channel) only for a plan that :attr:`needs them
        <needs_scores>`; uniform, proportional and explicit allocations plan without.
        """
        if self.needs_scores and scores is None:
            raise PruningError("a global-ranking plan's channel counts follow from the channel scores: give scores")
        return plan_pruning(context.space, scores or {}, self.config, self.ratio_weights)

    def planned_reduction(self, context: SpaceContext, scores: Mapping[str, torch.Tensor] | None = None) -> float:
        """Fraction of the unpruned MACs this plan removes (``scores`` as for :meth:`keep`)."""
        return context.space.reduction(self.keep(context, scores))
