"""FPEI: filter importance by the entropy of its feature maps."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pruning.criteria._base import StatisticsCriterion, register_criterion
from pruning.errors import InputError
from pruning.statistics import stats_from_context
from pruning.statistics.measures import check_estimator

__all__ = ["ENTROPY_VALUES", "EntropyOptions", "EntropyCriterion"]

#: what the entropy is of: each channel's histogram, or each map's spatial softmax
ENTROPY_VALUES = ("histogram", "map-softmax")


@dataclass(frozen=True)
class EntropyOptions:
    """``value``: one of :data:`ENTROPY_VALUES`; ``estimator``: the histogram's entropy estimator
    (``"plugin"`` or ``"miller-madow"``; the map-softmax entropy is exact per map and ignores it)."""

    value: str = "histogram"
    estimator: str = "plugin"

    def __post_init__(self) -> None:
        if self.value not in ENTROPY_VALUES:
            raise InputError(f"unknown entropy value {self.value!r}; valid: {', '.join(ENTROPY_VALUES)}")
        check_estimator(self.estimator)


@register_criterion("entropy")
class EntropyCriterion(StatisticsCriterion):
    """Feature-map entropy (FPEI).

    ``value="histogram"`` (default): score_c = H_c, the entropy of channel c's histogram
    (``bins`` fixed-edge bins, default 32, the edges shared by the layer by default) of its
    global-average-pooled post-BN/ReLU activation per calibration image (``value="spatial"`` in
    the statistics histograms every position instead), the plug-in estimate
    (``estimator="miller-madow"`` adds the bias correction (K - 1) / (2N)). A channel whose
    activation barely varies across the layer's range carries little information: low entropy
    is pruned first. The defaults are the variant measured best
    (benchmarks/results/entropy_variants.json).

    ``value="map-softmax"``: the per-map form of public feature-map-entropy pruning code:
    score_c = log(H*W) - (1/N) sum_i H(softmax(O_i,c)), the entropy of the softmax over the
    spatial positions of image i's map subtracted from its maximum. A flat map (a dead channel
    included) scores 0 and is pruned first, a peaked one is kept; Linear outputs (one position)
    all score 0.

    Residual-coupled groups average over the tensors their consumer convolutions read, after
    the residual additions (``source="consumer"``, the default), or over their producers'
    pre-addition outputs (``"producer"``). The default is the one measured best on ResNet-20
    (benchmarks/results/resnet20_fmnist_source_*.json).

    Reference: Wang, Jiang, Cui, Cao, "Filter pruning with a feature map entropy importance
    criterion for convolution neural networks compressing", Neurocomputing 461 (2021) (FPEI);
    the GAP-histogram entropy follows Luo & Wu, "An entropy-based pruning method for CNN
    compression", arXiv:1706.05791; the bias correction is Miller's (1955); the per-map form is
    that of the public code of "Filter Pruning via Measuring Feature Map Information"
    (github.com/pinery-sls/filter_pruning, ``cifar/resprune_entoryfm.py``: the softmax entropy of
    each conv output map summed over images, the highest pruned), read post-BN/ReLU here.
    """

    def __init__(self, seed: int = 0, value: str = "histogram", estimator: str = "plugin",
                 source: str = "consumer") -> None:
        super().__init__(seed, source)
        self.options = EntropyOptions(value=value, estimator=estimator)

    def required_statistics(self) -> frozenset[str]:
        extra = {"map_entropy"} if self.options.value == "map-softmax" else set()
        return super().required_statistics() | extra

    def score(self, model, groups, context):
        stats = stats_from_context(self, context, groups)
        if self.options.value == "histogram":
            return {g.name: stats.channel_entropy(g, estimator=self.options.estimator, source=self.source).float() for g in groups}
        out: dict[str, torch.Tensor] = {}
        for g in groups:
            positions = int(stats.layer_stats(g, self.source)[0].map_size.prod())
            out[g.name] = (math.log(max(positions, 1)) - stats.channel_map_entropy(g, source=self.source)).float()
        return out
