"""``stages``: a FLOPs target distributed over the network's stages by one weight per stage.

Parameters: ``flops_reduction`` (the global target), one ``weight.<stage>`` per stage (uniform
in the ``stage_weight`` option's range), plus the shared ones. Every group of a stage gets the
stage's weight; layer ratios are min(cap, s * w_stage) with s fitted to the target by
``pruning.planning``'s proportional allocation, so every plan meets its FLOPs target within
:data:`~pruning.planning.FLOPS_TOLERANCE` (``check_feasible`` rejects the rest). Only the
weights' ratios matter: weight 1 everywhere is the uniform allocation; weight 0 leaves a stage
unpruned (unless the target cannot be reached otherwise).

Stages, from the names of the groups the strategy may prune (:func:`stage_assignment`):

* **by name**: a group named ``<stage>.<index>.<rest>`` (the first all-digit path component,
  preceded and followed by other components, marks a block of a sequential stage) belongs to
  ``<stage>``: ``layer2.3.conv1`` -> ``layer2``, ``backbone.layer2.0.conv2`` ->
  ``backbone.layer2``; every other group (the stem ``conv1``, the residual stream it opens, a
  plain ``features.7``) belongs to ``other``. ResNet-20/56/110: ``layer1``, ``layer2``,
  ``layer3`` and ``other`` (four parameters whatever the depth; ``inner``: the three stages).
* **by call order**, when the names give fewer than two stages (VGG's ``features.<i>``,
  MobileNet's single ``blocks.<i>`` sequence): the groups, in the order the forward pass calls
  their first producer, are cut into ``stages`` consecutive buckets of (as nearly as possible)
  equal numbers of groups, named ``stage1`` ... ``stageN`` (fewer if there are fewer groups).

Warm starts: the uniform allocation (every weight equal, at the top of ``stage_weight``) at
:data:`~search_spaces.WARM_START_QUANTILES` of the target range (within ``flops_bounds``) for
every criterion, without fine-tuning: the one-shot uniform pipelines; then (``global_ranking``)
the same as global rankings.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import optuna

from pruning.structure import ChannelGroup, PruningSpace
from search_spaces._base import SearchSpace, SpaceContext, TrialPlan, register_space
from search_spaces._options import _clip, _float_range, _param

PREFIX = "weight."
#: the stage of groups outside every named block stage
OTHER = "other"
#: a model whose names give fewer stages than this is split by call order
MIN_NAMED_STAGES = 2


def stage_of(name: str) -> str | None:
    """The block stage of a layer name (``layer2.3.conv1`` -> ``layer2``), or None if it has none."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]) if 0 < i < len(parts) - 1 else None
    return None


def _call_position(space: PruningSpace, groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    """``groups`` in the order the forward pass first calls one of their producers."""
    position = {module: i for i, module in reversed(list(enumerate(space.call_order)))}
    model_order = {g.name: i for i, g in enumerate(groups)}

    def key(group: ChannelGroup) -> tuple[int, int]:
        called = [position[p] for p in group.producers if p in position]
        return (min(called) if called else len(position), model_order[group.name])

    return sorted(groups, key=key)


def stage_assignment(context: SpaceContext, stages: int) -> dict[str, str]:
    """{group name: stage} for the groups ``context.strategy`` may prune (see the module docstring).

    The stages appear in first-use order in the dict's values: named stages in model order with
    ``other`` last, or ``stage1`` ... ``stageN`` by call order.
    """
    groups = context.space.select(context.strategy)
    named = {g.name: stage_of(g.name) for g in groups}
    if len({s for s in named.values() if s is not None}) >= MIN_NAMED_STAGES:
        assignment = {name: stage for name, stage in named.items() if stage is not None}
        assignment.update({name: OTHER for name, stage in named.items() if stage is None})
        return assignment
    ordered = _call_position(context.space, groups)
    buckets = min(stages, len(ordered))
    return {g.name: f"stage{i * buckets // len(ordered) + 1}" for i, g in enumerate(ordered)}


@register_space("stages")
class StagesSpace(SearchSpace):
    """Global FLOPs target, one relative pruning weight per stage: a handful of parameters at any depth."""

    def __init__(
        self,
        flops_reduction: tuple[float, float] = (0.2, 0.8),
        stage_weight: tuple[float, float] = (0.0, 1.0),
        stages: int = 4,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)  # criteria, finetune_lr, finetune_epochs, weight_decay, flops_bounds
        self.flops_reduction = _float_range("flops_reduction", flops_reduction, lo=0.0, hi=1.0, hi_open=True)
        self.stage_weight = _float_range("stage_weight", stage_weight, lo=0.0, hi=1.0)
        if self.stage_weight[1] <= 0.0:
            raise ValueError(f"stage_weight must have a positive upper end, got {stage_weight!r}")
        if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {stages!r}")
        self.stages = stages

    def _own_options(self) -> dict[str, Any]:
        return {"flops_reduction": self.flops_reduction, "stage_weight": self.stage_weight, "stages": self.stages}

    def stage_names(self, context: SpaceContext) -> list[str]:
        """The stages of ``context``'s prunable groups, in order (one parameter each)."""
        return list(dict.fromkeys(stage_assignment(context, self.stages).values()))

    def parameter_names(self, context: SpaceContext) -> list[str]:
        """``weight.<stage>`` for every stage."""
        return [PREFIX + stage for stage in self.stage_names(context)]

    def define(self, trial: optuna.Trial, context: SpaceContext) -> None:
        trial.suggest_float("flops_reduction", *self.flops_reduction)
        for name in self.parameter_names(context):
            trial.suggest_float(name, *self.stage_weight)
        self._define_shared(trial)

    def _warm_starts(self, context: SpaceContext) -> list[dict[str, Any]]:
        weight = _clip(1.0, self.stage_weight)
        weights = {name: weight for name in self.parameter_names(context)}
        return self._with_global_ranking([
            {"flops_reduction": target, **weights, **self._warm_shared(criterion)}
            for criterion in self.criteria for target in self._warm_targets(self.flops_reduction)
        ])

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        weights = {stage: float(_param(params, PREFIX + stage)) for stage in self.stage_names(context)}
        ratio_weights = {group: weights[stage] for group, stage in stage_assignment(context, self.stages).items()}
        config = self._ratio_plan("uniform", context, float(_param(params, "flops_reduction"))).config
        return self._make_plan(params, context, config, ratio_weights)
