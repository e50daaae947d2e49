"""Information concentration: layer-wise pruning-ratio weights from entropy and rank.

After Chen & Wang, "An Effective Information Theoretic Framework for Channel Pruning"
(arXiv:2408.16772): a layer's information is measured by two indicators, the entropy of its
feature maps and their rank, fused into one "information concentration" (IC) that sets how much
of the layer is pruned: layers with more information are pruned less.

What we compute, per channel group l (from :class:`~pruning.statistics.ActivationStats`):

1. E_l = mean over the group's channels of the channel entropy (``channel_entropy``: histogram
   entropy of the GAP activation, averaged over residual-coupled producers);
2. R_l = mean over the channels of the mean map rank divided by min(H, W) (``channel_relative_rank``),
   so that layers at different resolutions compare; Linear outputs count as 1x1 maps;
3. each indicator min-max normalised across the given groups to [0, 1]
   (E'_l = (E_l - min E) / (max E - min E)); when all groups are equal the indicator is 0.5;
4. IC_l = 1 / (alpha / e_l + (1 - alpha) / r_l), the weighted harmonic mean of
   e_l = (E'_l + eps) / (1 + eps) and r_l = (R'_l + eps) / (1 + eps); eps = 1e-6 keeps it finite
   when an indicator is 0 and the shift keeps IC in [0, 1] (IC = 1 only where both are 1);
   alpha = 1 gives the normalised entropy, alpha = 0 the normalised rank;
5. the pruning-ratio weight w_l = (1 - IC_l) ** temperature in [0, 1]: the layer with the most
   information gets weight 0 (not pruned), the least informative 1. ``temperature`` < 1
   flattens the weights towards uniform (0 gives all ones), > 1 sharpens them. The engine scales
   the weights (by bisection) to meet a FLOPs target.

The paper does not pin the normalisation across layers nor the fusion weights; the harmonic mean
is the "compromise" fusion (it is small when either indicator is small), min-max normalisation
makes the two indicators commensurate, and alpha is exposed.

That fusion (``fusion="minmax"``) collapses: the layer that is the minimum of EITHER indicator
gets e or r = eps, hence IC ~ 1e-6 and weight ~ 1, as if it were the least informative on both;
measured on VGG-16 it sends such layers to the per-layer cap
(benchmarks/results/vgg16_fmnist_aim_concentration_minmax.json). With
``fusion="rank"`` each indicator becomes its mid-rank percentile among the groups,
p_l = (rank_l - 1/2) / n in (0, 1) (ties share their mean rank), and IC_l = alpha * p^E_l +
(1 - alpha) * p^R_l, the weighted arithmetic mean: a layer lowest on one indicator and highest on
the other sits in the middle (IC ~ 1/2), only a layer lowest on both gets the largest weight
1 - 1/(2n), and the most informative one the smallest, 1/(2n) (never exactly 0: every layer
may be pruned a little). Ranks also ignore the indicators' scales and outliers.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pruning.structure.groups import ChannelGroup
from pruning.errors import InputError
from pruning.statistics import ActivationStats

EPS = 1e-6
#: how the two indicators are normalised and fused (see the module docstring)
FUSIONS = ("minmax", "rank")


def _minmax(values: torch.Tensor) -> torch.Tensor:
    lo, hi = values.min(), values.max()
    if float(hi - lo) <= 1e-12 * max(1.0, float(hi.abs())):
        return torch.full_like(values, 0.5)
    return (values - lo) / (hi - lo)


def layer_indicators(stats: ActivationStats, groups: Sequence[ChannelGroup]) -> dict[str, tuple[float, float]]:
    """{group name: (E_l, R_l)}: mean channel entropy (nats) and mean relative map rank."""
    return {
        g.name: (float(stats.channel_entropy(g).mean()), float(stats.channel_relative_rank(g).mean()))
        for g in groups
    }


def _percentiles(values: torch.Tensor) -> torch.Tensor:
    """Mid-rank percentiles (rank - 1/2) / n in (0, 1); tied values share their mean rank."""
    n = values.numel()
    order = values.argsort(stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(1, n + 1, dtype=torch.float64)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return (ranks - 0.5) / n


def fuse_indicators(entropy: torch.Tensor, rank: torch.Tensor, alpha: float, fusion: str) -> torch.Tensor:
    """IC per layer from the raw per-layer indicators (see the module docstring)."""
    if fusion == "rank":
        return alpha * _percentiles(entropy) + (1.0 - alpha) * _percentiles(rank)
    e = (_minmax(entropy) + EPS) / (1 + EPS)
    r = (_minmax(rank) + EPS) / (1 + EPS)
    return (1.0 / (alpha / e + (1.0 - alpha) / r)).clamp(0.0, 1.0)  # the clamp guards rounding only


def information_concentration(
    stats: ActivationStats, groups: Sequence[ChannelGroup], alpha: float = 0.5, fusion: str = "minmax",
) -> dict[str, float]:
    """{group name: IC_l in [0, 1]}; see the module docstring."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    if not groups:
        return {}
    indicators = layer_indicators(stats, groups)
    values = torch.tensor(list(indicators.values()), dtype=torch.float64)
    ic = fuse_indicators(values[:, 0], values[:, 1], alpha, fusion)
    return {name: float(v) for name, v in zip(indicators, ic)}


def concentration_weights(
    stats: ActivationStats,
    groups: Sequence[ChannelGroup],
    alpha: float = 0.5,
    temperature: float = 1.0,
    fusion: str = "minmax",
) -> dict[str, float]:
    """{group name: (1 - IC_l) ** temperature in [0, 1]}: relative layer-wise pruning ratios."""
    if temperature < 0 or temperature != temperature:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    ic = information_concentration(stats, groups, alpha, fusion)
    return {name: float((1.0 - v) ** temperature) for name, v in ic.items()}
