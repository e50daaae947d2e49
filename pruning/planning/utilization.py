"""SNPFI's layer sparsity under one global budget: layers compete for channels by utilization
lost per MAC saved, instead of each layer stopping at its own threshold U(k) >= tau.

Each layer l has a utilization curve U_l(k), k = 0..n_l (``pruning.games.utilization_curve``);
keeping k channels loses 1 - U_l(k) of the layer's utilization. Starting from the full model,
:func:`allocate_utilization` repeatedly narrows the layer (one allowed width) whose step loses
the least utilization per MAC it saves, where a step's MACs are measured on the current widths
(``space.macs``: a channel's cost depends on its neighbours' widths), until

* with ``flops_reduction``: the MAC reduction reaches it (then
  :func:`pruning.planning.widths.refine_to_target` lands it within the tolerance), or
* without: the next step would take the summed loss past ``len(groups) * (1 - tau)``, the total
  the per-layer threshold allows (each layer may lose up to 1 - tau).

Layers never go below their :class:`~pruning.planning.widths.WidthGrid` floor (``max_layer_ratio``,
``min_channels``, ``round_to``), as in every other allocation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from pruning.planning.schedule import _check_fraction, _check_reachable
from pruning.planning.widths import WidthGrid, refine_to_target
from pruning.structure.engine import PruningError
from pruning.structure.groups import ChannelGroup

__all__ = ["allocate_utilization"]


def allocate_utilization(
    space,
    groups: Sequence[ChannelGroup],
    curves: Mapping[str, torch.Tensor],
    *,
    flops_reduction: float | None = None,
    tau: float = 0.95,
    grid: WidthGrid = WidthGrid(),
) -> dict[str, int]:
    """Channels kept per group, chosen jointly from the utilization curves (module docstring).

    ``space`` needs ``macs(keep)`` and ``reduction(keep)`` (a :class:`~pruning.structure.PruningSpace`).
    Ties (equal loss per MAC) go to the group listed first.
    """
    if not 0.0 < tau <= 1.0:
        raise PruningError(f"tau must be in (0, 1], got {tau!r}")
    table = {}
    for g in groups:
        if g.name not in curves:
            raise PruningError(f"no utilization curve for layer {g.name!r}")
        curve = torch.as_tensor(curves[g.name], dtype=torch.float64).flatten()
        if curve.numel() != g.size + 1:
            raise PruningError(f"the utilization curve of layer {g.name!r} needs {g.size + 1} values, got {curve.numel()}")
        table[g.name] = curve.tolist()
    if flops_reduction is not None:
        _check_fraction("flops_reduction", flops_reduction)
        _check_reachable(space, groups, flops_reduction, grid)
    budget = len(groups) * (1.0 - tau)
    keep = {g.name: g.size for g in groups}
    loss = 0.0
    while True:
        if flops_reduction is not None and space.reduction(keep) >= flops_reduction:
            break
        macs = space.macs(keep)
        best = None
        for g in groups:
            width = grid.next_width(g, keep[g.name], -1)
            if width is None:
                continue
            curve = table[g.name]
            lost = curve[keep[g.name]] - curve[width]
            keep[g.name], old = width, keep[g.name]
            saved = macs - space.macs(keep)
            keep[g.name] = old
            rate = lost / max(saved, 1e-12)
            if best is None or rate < best[0]:
                best = (rate, g.name, width, lost)
        if best is None:
            break
        _, name, width, lost = best
        if flops_reduction is None and loss + lost > budget + 1e-9:
            break
        keep[name] = width
        loss += lost
    if flops_reduction is None:
        return keep
    # refine_to_target leaves a plan already within half the tolerance as it is
    intended = {g.name: 1.0 - keep[g.name] / g.size for g in groups}
    return refine_to_target(space, groups, keep, flops_reduction, intended, grid)
