"""``uniform``: the same ratio in every group the strategy may prune."""
from __future__ import annotations

from pruning.planning.ratio_sources._base import RatioPlan, RatioSource, register_ratio_source


@register_ratio_source("uniform")
class Uniform(RatioSource):
    """One channel ratio in every group; with a FLOPs target, the ratio scaled by bisection to meet
    it (then refined one allowed width at a time)."""

    def make_plan(self, target, inputs, groups) -> RatioPlan:
        return RatioPlan(target.config(allocation="uniform", **target.amount()))
