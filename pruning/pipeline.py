"""One pruning step end to end: score channels, plan widths, remove channels.

This is the public entry point for pruning any ``nn.Module`` (registered or a user's own):

>>> outcome = prune_with_criterion(model, example_inputs, create_criterion("l1"),
...                                PruningConfig(flops_reduction=0.5))
>>> outcome.model  # a physically smaller copy; ``model`` is untouched

Recovery (reconstruction, BN recalibration, fine-tuning) is a separate step:
:func:`pruning.recovery.recover` with a :class:`~pruning.recovery.RecoveryRecipe`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from pruning.criteria import Criterion, ScoringContext
from pruning.planning import PruningConfig, plan_pruning
from pruning.structure import PruningError, PruningSpace, prune_model
from pruning.structure.groups import ChannelGroup
from pruning.utils import check_finite


@dataclass(frozen=True)
class PruneOutcome:
    model: nn.Module
    space: PruningSpace
    keep: dict[str, int]
    kept_indices: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]

    @property
    def planned_reduction(self) -> float:
        return self.space.reduction(self.keep)


def score_channels(
    criterion: Criterion, model: nn.Module, space: PruningSpace, strategy: str, context: ScoringContext
) -> dict[str, torch.Tensor]:
    """Scores of the groups ``strategy`` may prune (only those: some criteria are expensive)."""
    check_finite(model, "the model to prune")
    criterion.check_task(context.task)
    groups = space.select(strategy)
    scores = criterion.score(model, groups, context)
    check_scores(criterion, groups, scores)
    return scores


def check_scores(criterion: Criterion, groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`~pruning.structure.PruningError` unless ``scores`` holds one finite score per
    channel of every group (a criterion's contract, checked where its scores are used)."""
    for group in groups:
        got = scores.get(group.name)
        if got is None or got.shape != (group.size,):
            raise PruningError(f"criterion {criterion.name!r} gave no valid scores for layer {group.name!r}")
        if not torch.isfinite(got).all():
            raise PruningError(f"criterion {criterion.name!r} gave non-finite scores (NaN or inf) for layer "
                               f"{group.name!r}")


# long signature: orchestrator/sweeps/trials.py (moving to orchestrator/experiment elsewhere)
# passes ratio_weights, space and scores by name; they become one value together with that caller
def prune_with_criterion(
    model: nn.Module,
    example_inputs,
    criterion: Criterion,
    config: PruningConfig,
    context: ScoringContext | None = None,
    *,
    ratio_weights: Mapping[str, float] | None = None,
    space: PruningSpace | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> PruneOutcome:
    """Score with ``criterion``, plan with ``config`` (and optional layer-wise ``ratio_weights``),
    and return a pruned copy of ``model``.

    ``scores``: ``criterion``'s scores when the caller already computed them (SNPFI scores and
    sets its layer ratios in one estimation pass); they are not recomputed.
    """
    check_finite(model, "the model to prune")
    space = space or PruningSpace.build(model, example_inputs)
    context = context or ScoringContext()
    if scores is None:
        scores = score_channels(criterion, model, space, config.strategy, context)
    scores = dict(scores)
    keep = plan_pruning(space, scores, config, ratio_weights)
    pruned, kept = prune_model(model, example_inputs, space, keep, scores)
    return PruneOutcome(pruned, space, keep, kept, scores)
