"""SNPFI's global sparsity budget (pruning.planning.allocate_utilization): layers compete for the
removals by utilization lost per MAC saved."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pruning.planning import FLOPS_TOLERANCE, allocate_utilization
from pruning.planning.widths import WidthGrid
from pruning.structure import PruningError, PruningSpace


@dataclass(frozen=True)
class Layer:
    name: str
    size: int


class LinearCosts:
    """A space whose MACs are sum_l cost_l * kept_l (hand-built per-channel costs)."""

    def __init__(self, costs):
        self.costs = costs

    def macs(self, keep):
        return float(sum(self.costs[n] * k for n, k in keep.items()))

    @property
    def base_macs(self):
        return float(sum(self.costs[n] * 4 for n in self.costs))

    def reduction(self, keep):
        return 1.0 - self.macs(keep) / self.base_macs


def curve(*values):
    return torch.tensor([0.0, *values], dtype=torch.float64)


FLAT = curve(0.9, 0.95, 0.98, 1.0)  # losing channels costs little
STEEP = curve(0.25, 0.5, 0.75, 1.0)


def test_the_flattest_curve_per_mac_pays_first_and_the_target_is_met():
    layers = [Layer("steep", 4), Layer("flat", 4)]
    space = LinearCosts({"steep": 1.0, "flat": 1.0})
    keep = allocate_utilization(space, layers, {"steep": STEEP, "flat": FLAT}, flops_reduction=0.25,
                                grid=WidthGrid(cap=0.75))
    assert keep == {"steep": 4, "flat": 2} and space.reduction(keep) == pytest.approx(0.25)
    keep = allocate_utilization(space, layers, {"steep": STEEP, "flat": FLAT}, flops_reduction=0.5,
                                grid=WidthGrid(cap=0.75))
    assert keep == {"steep": 3, "flat": 1}  # flat at its floor (cap 0.75), then steep
    # equal curves: the layer whose channels cost twice the MACs saves twice as much per loss
    space = LinearCosts({"cheap": 1.0, "dear": 2.0})
    layers = [Layer("cheap", 4), Layer("dear", 4)]
    keep = allocate_utilization(space, layers, {"cheap": STEEP, "dear": STEEP}, flops_reduction=0.33)
    assert keep == {"cheap": 4, "dear": 2} and abs(space.reduction(keep) - 0.33) <= FLOPS_TOLERANCE / 2


def test_equal_curves_and_costs_give_the_per_layer_threshold():
    concave = curve(0.5, 0.75, 0.9, 1.0)  # tau 0.75: each layer alone keeps k* = 2
    layers = [Layer(n, 4) for n in "abc"]
    space = LinearCosts({n: 1.0 for n in "abc"})
    keep = allocate_utilization(space, layers, {n: concave for n in "abc"}, tau=0.75)
    assert keep == {"a": 2, "b": 2, "c": 2}
    # a flatter layer takes more of the same total loss than its own threshold would give it
    keep = allocate_utilization(space, layers, {"a": concave, "b": concave, "c": curve(0.9, 0.95, 0.98, 1.0)},
                                tau=0.75)
    assert keep["c"] == 1 and keep["a"] >= 2 and keep["b"] >= 2


def test_real_space_target_floor_and_errors(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    groups = space.groups
    g = torch.Generator().manual_seed(0)
    curves = {}
    for group in groups:
        steps = torch.rand(group.size, generator=g, dtype=torch.float64)
        curves[group.name] = torch.cat([torch.zeros(1, dtype=torch.float64), steps.sort(descending=True).values.cumsum(0)])
        curves[group.name] = curves[group.name] / curves[group.name][-1]
    keep = allocate_utilization(space, groups, curves, flops_reduction=0.5,
                                grid=WidthGrid(cap=0.7, min_channels=2))
    assert abs(space.reduction(keep) - 0.5) <= FLOPS_TOLERANCE
    grid = WidthGrid(cap=0.7, min_channels=2)
    assert all(grid.bounds(group)[0] <= keep[group.name] <= group.size for group in groups)
    with pytest.raises(PruningError, match="no utilization curve for layer"):
        allocate_utilization(space, groups, {}, flops_reduction=0.5)
    with pytest.raises(PruningError, match="needs"):
        allocate_utilization(space, groups, {n: c[:-1] for n, c in curves.items()}, flops_reduction=0.5)
    with pytest.raises(PruningError, match="tau"):
        allocate_utilization(space, groups, curves, tau=0.0)
