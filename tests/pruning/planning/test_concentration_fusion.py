"""The fusion of the two layer indicators (entropy, rank) into information concentration: the
min-max + harmonic-mean fusion collapses on a layer that is lowest on ONE indicator; the rank
fusion gives the largest weight only to a layer lowest on both."""
from __future__ import annotations

import pytest
import torch

from pruning.errors import InputError
from pruning.planning.concentration import fuse_indicators

# four layers: A lowest entropy but high rank, B lowest rank but high entropy, C second
# lowest on both, D the most informative on both
ENTROPY = torch.tensor([0.10, 2.00, 0.50, 2.50], dtype=torch.float64)
RANK = torch.tensor([0.95, 0.10, 0.20, 1.00], dtype=torch.float64)


def test_minmax_fusion_collapses_on_the_minimum_of_one_indicator():
    ic = fuse_indicators(ENTROPY, RANK, 0.5, "minmax")
    # A and B, each lowest on one indicator only, get IC ~ 0 (weight ~ 1, pruned the most), more
    # than C, which is second lowest on both
    assert ic[0] < 1e-5 and ic[1] < 1e-5
    assert ic[2] > ic[0] and ic[2] > ic[1]


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_rank_fusion_gives_the_largest_weight_only_to_a_layer_lowest_on_both(alpha):
    n = len(ENTROPY)
    # nobody is lowest on both: no weight reaches 1 - 1/(2n), the rank fusion's largest
    weights = 1 - fuse_indicators(ENTROPY, RANK, alpha, "rank")
    assert float(weights.max()) <= 1 - 1 / n + 1e-12
    assert int(weights.argmin()) == 3 and float(weights.min()) == pytest.approx(1 / (2 * n))  # D: never 0
    # C made the lowest on both: it alone gets the largest weight
    lowest = RANK.clone()
    lowest[2] = 0.05
    entropy = ENTROPY.clone()
    entropy[2] = 0.05
    weights = 1 - fuse_indicators(entropy, lowest, alpha, "rank")
    assert int(weights.argmax()) == 2 and float(weights.max()) == pytest.approx(1 - 1 / (2 * n))
    assert sorted(weights.tolist())[-2] < 1 - 1 / n + 1e-12


def test_rank_fusion_is_mid_rank_percentiles():
    entropy = torch.tensor([3.0, 1.0, 2.0, 2.0], dtype=torch.float64)  # a tie shares its mean rank
    rank = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    ic = fuse_indicators(entropy, rank, 1.0, "rank")
    assert ic.tolist() == pytest.approx([3.5 / 4, 0.5 / 4, 2.0 / 4, 2.0 / 4])
    assert fuse_indicators(entropy, rank, 0.0, "rank").tolist() == pytest.approx([0.5 / 4, 1.5 / 4, 2.5 / 4, 3.5 / 4])
    # scale does not matter, order does
    assert torch.equal(fuse_indicators(entropy * 100, rank ** 3, 0.5, "rank"), fuse_indicators(entropy, rank, 0.5, "rank"))


def test_unknown_fusion_is_refused(tiny_resnet, example_input, calibration_batches):
    from pruning.planning import information_concentration
    from pruning.statistics import StatsOptions, collect_activation_stats
    from pruning.structure import PruningSpace

    space = PruningSpace.build(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, [(x[:4], y[:4]) for x, y in calibration_batches],
                                     StatsOptions(bins=4))
    with pytest.raises(InputError, match="unknown fusion 'mean'; valid: minmax, rank"):
        information_concentration(stats, space.groups, fusion="mean")
