"""``global``: one ranking of every channel's layer-normalised score across the groups."""
from __future__ import annotations

from pruning.planning.ratio_sources._base import RatioPlan, RatioSource, register_ratio_source


@register_ratio_source("global")
class GlobalRanking(RatioSource):
    """The globally lowest layer-normalised scores go first, each layer within its cap and floor
    (:func:`~pruning.planning.allocate_global`): the plan's channel counts follow from the channel
    scores (:attr:`RatioPlan.needs_scores`)."""

    def make_plan(self, target, inputs, groups) -> RatioPlan:
        return RatioPlan(target.config(allocation="global", **target.amount()))
