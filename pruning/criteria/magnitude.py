"""Filter-norm criteria: a filter with small weights contributes little to the next layer."""
from __future__ import annotations

import torch
from torch import nn

from pruning.criteria._base import ModuleCriterion, register_criterion


@register_criterion("l1")
class L1Norm(ModuleCriterion):
    """L1 norm of each output filter, s_i = sum_j |W_ij| over the filter's weights (bias excluded).

    Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017. A group's score is the mean
    over its producers (see :class:`ModuleCriterion`).
    """

    def score_module(self, module: nn.Module) -> torch.Tensor:
        return module.weight.flatten(1).abs().sum(1)


@register_criterion("l2")
class L2Norm(ModuleCriterion):
    """L2 norm of each output filter, s_i = sqrt(sum_j W_ij^2) over the filter's weights (bias excluded).

    The L2 variant of Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017 (also the
    norm used by soft filter pruning, He et al., IJCAI 2018). A group's score is the mean over its
    producers (see :class:`ModuleCriterion`).
    """

    def score_module(self, module: nn.Module) -> torch.Tensor:
        return module.weight.flatten(1).norm(dim=1)
