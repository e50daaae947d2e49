"""Filter pruning via geometric median: filters that others can stand in for are redundant."""
from __future__ import annotations

import torch
from torch import nn

from pruning.criteria._base import ModuleCriterion, register_criterion


@register_criterion("fpgm")
class GeometricMedian(ModuleCriterion):
    """Sum of Euclidean distances from each filter to every other filter of its layer,
    s_i = sum_j ||W_i - W_j||_2 (weights flattened per output channel, bias excluded).

    He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks
    Acceleration", CVPR 2019. The filter minimising this sum approximates the layer's geometric
    median; filters near it carry information the remaining filters also represent, so they
    score low and are pruned first regardless of their norm. A group's score is the mean over
    its producers (see :class:`ModuleCriterion`).
    """

    def score_module(self, module: nn.Module) -> torch.Tensor:
        filters = module.weight.detach().flatten(1).double()
        # |a|^2 + |b|^2 - 2 a.b (one matrix product: the direct pairwise differences cost
        # n^2 x filter size and take seconds on 512-filter layers). In float64 its cancellation
        # error for near-identical filters, exactly the ones this criterion is about, stays
        # around 1e-8 of the filter norm, far below the distances between distinct filters.
        distances = torch.cdist(filters, filters, compute_mode="use_mm_for_euclid_dist")
        return distances.sum(1)
