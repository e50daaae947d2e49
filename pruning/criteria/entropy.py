"""FPEI: filter importance by the entropy of its feature maps."""
from __future__ import annotations

from pruning.criteria._base import Criterion, register_criterion
from pruning.statistics import stats_from_context


@register_criterion("entropy")
class EntropyCriterion(Criterion):
    """Feature-map entropy (FPEI).

    score_c = H_c = -sum_k p_k log p_k, where p is channel c's histogram (``bins`` fixed-edge
    bins, default 32) of its global-average-pooled post-BN/ReLU activation per calibration image
    (``value="spatial"`` in the statistics histograms every position instead). A channel whose
    activation barely varies carries little information: low entropy is pruned first.
    Residual-coupled groups average the entropies of their producers' outputs.

    Reference: Wang, Jiang, Cui, Cao, "Filter pruning with a feature map entropy importance
    criterion for convolution neural networks compressing", Neurocomputing 461 (2021) (FPEI);
    the GAP-histogram entropy follows Luo & Wu, "An entropy-based pruning method for CNN
    compression", arXiv:1706.05791.
    """

    needs_stats = True

    def score(self, model, groups, context):
        stats = stats_from_context(self, context)
        return {g.name: stats.channel_entropy(g).float() for g in groups}
