"""CHIP: channel independence of feature maps."""
from __future__ import annotations

from pruning.criteria._base import StatisticsCriterion, register_criterion
from pruning.statistics import stats_from_context


@register_criterion("chip")
class ChipCriterion(StatisticsCriterion):
    """Channel independence (CHIP).

    For image i let A_i be the (C, H*W) matrix of a layer's post-BN/ReLU maps, one row per
    channel. score_c = (1/N) sum_i ( ||A_i||_* - ||A_i^{(c)}||_* ), with A^{(c)} = A with row c
    set to zero and ||.||_* the nuclear norm. A channel whose map is (nearly) a combination of
    the others changes the nuclear norm little and is pruned first. Linear outputs are (C, 1)
    matrices. Residual-coupled groups average over their producers' outputs (``source="producer"``)
    or over the tensors their consumers read (``"consumer"``).

    Needs statistics collected with ``chip=True`` (``collect_activation_stats(..., StatsOptions(chip=True))``).

    Reference: Sui et al., "CHIP: CHannel Independence-based Pruning for Compact Neural
    Networks", NeurIPS 2021.
    """

    def required_statistics(self) -> frozenset[str]:
        return super().required_statistics() | {"chip"}

    def score(self, model, groups, context):
        stats = stats_from_context(self, context, groups)
        return {g.name: stats.channel_chip(g, source=self.source).float() for g in groups}
