"""Activation-based criteria: APoZ and mean activation."""
from __future__ import annotations

from pruning.criteria._base import StatisticsCriterion, register_criterion
from pruning.statistics import stats_from_context


@register_criterion("apoz")
class APoZCriterion(StatisticsCriterion):
    """Average Percentage of Zeros (APoZ).

    APoZ_c = #{(i, h, w) : O_i,c(h, w) = 0} / (N H W) over the calibration images of channel
    c's post-BN/ReLU output; score_c = 1 - APoZ_c (mostly-zero channels are pruned first).
    Outputs not followed by a ReLU (the pre-addition branches of a residual block) are rarely
    exactly zero and score about 1. Residual-coupled groups average over their producers
    (``source="producer"``) or over the tensors their consumers read (``"consumer"``).

    ``class_scores="max"``: score_c = 1 - min_k APoZ_c,k over the classes k, the channel's APoZ
    on the class where it is least often zero (statistics collected with ``per_class=True``).

    Reference: Hu, Peng, Tai, Tang, "Network Trimming: A Data-Driven Neuron Pruning Approach
    towards Efficient Deep Architectures", arXiv:1607.03250 (2016).
    """

    has_class_scores = True

    def score(self, model, groups, context):
        stats = stats_from_context(self, context, groups)
        return {g.name: (1.0 - stats.channel_apoz(g, source=self.source, class_scores=self.class_scores)).float()
                for g in groups}


@register_criterion("mean-activation")
class MeanActivationCriterion(StatisticsCriterion):
    """Mean activation.

    score_c = (1/N) sum_i (1/(H W)) sum_{h,w} O_i,c(h, w), the mean over calibration images of
    the global-average-pooled post-BN/ReLU output (non-negative after a ReLU; outputs without
    one may score negative). Residual-coupled groups average over their producers
    (``source="producer"``) or over the tensors their consumers read (``"consumer"``).
    ``class_scores="max"``: score_c = max_k of the mean over the images of class k, the class
    the channel responds to most (statistics collected with ``per_class=True``).

    Reference: Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks
    for Resource Efficient Inference", ICLR 2017 (the mean-activation baseline).
    """

    has_class_scores = True

    def score(self, model, groups, context):
        stats = stats_from_context(self, context, groups)
        return {g.name: stats.channel_mean(g, source=self.source, class_scores=self.class_scores).float() for g in groups}
