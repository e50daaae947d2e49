"""HRank: filter importance by the average rank of its feature maps."""
from __future__ import annotations

from pruning.criteria._base import StatisticsCriterion, register_criterion
from pruning.statistics import stats_from_context


@register_criterion("hrank")
class HRankCriterion(StatisticsCriterion):
    """Average feature-map rank (HRank).

    score_c = (1/N) sum_i rank(O_i,c), the matrix rank of channel c's HxW post-BN/ReLU map for
    calibration image i (``torch.linalg.matrix_rank`` default tolerance). Low-rank maps carry
    less information: low average rank is pruned first. Linear layers have no maps; their
    values are taken as 1x1 maps, whose rank is 1 where non-zero, so the score is the fraction
    of non-zero activations. Residual-coupled groups average over their producers' outputs
    (``source="producer"``) or over the tensors their consumers read (``"consumer"``).
    ``class_scores="max"``: the largest over the classes of the mean rank of that class's ranked
    images (statistics collected with ``per_class=True``).

    Reference: Lin et al., "HRank: Filter Pruning using High-Rank Feature Map", CVPR 2020.
    """

    has_class_scores = True

    def score(self, model, groups, context):
        stats = stats_from_context(self, context, groups)
        return {g.name: stats.channel_rank(g, linear_as_1x1=True, source=self.source,
                                           class_scores=self.class_scores).float() for g in groups}
