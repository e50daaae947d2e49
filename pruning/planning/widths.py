"""Integer channel widths: the widths a layer may keep, and the search that lands a plan on its
FLOPs target with them.

A layer keeps between a floor (its per-layer cap and ``min_channels``) and all of its channels.
With ``round_to`` > 1 only multiples of ``round_to`` (and the full width) are allowed: inference
libraries run convolutions fastest on channel counts that fill their vector lanes (an odd-width
pruned model can be slower in onnxruntime than the unpruned one: docs/benchmarks.md, "torchvision
models in PyTorch and onnxruntime").

Channel counts are integers, so a FLOPs target cannot be met by bisection on one number alone
(one channel of a 16-channel layer is 6%). :func:`refine_to_target` moves single layers one
allowed width at a time until the MAC reduction is as close to the target as such a move allows,
preferring layers whose ratio is furthest from the intended one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from pruning.structure.engine import PruningSpace
from pruning.structure.groups import ChannelGroup

__all__ = ["WidthGrid", "refine_to_target"]

#: the FLOPs target is met within this many fractions (1 percentage point)
FLOPS_TOLERANCE = 0.01


@dataclass(frozen=True)
class WidthGrid:
    """The widths a group may keep: within ``bounds``, multiples of :meth:`step` or the full width.

    cap: the largest fraction of a group's channels that may be removed.
    min_channels: the fewest channels a group keeps.
    round_to: kept widths are multiples of this (a group keeps all its channels if it has fewer).
    A group with units (``ChannelGroup.units``: grouped convolutions, attention heads) keeps a
    multiple of its unit width as well.
    """

    cap: float = 0.9
    min_channels: int = 1
    round_to: int = 1

    def step(self, group: ChannelGroup) -> int:
        """Allowed widths are multiples of this: ``round_to`` and the group's unit width."""
        units = getattr(group, "units", None)  # anything with a name and a size plans; units where it has them
        return math.lcm(self.round_to, units.width if units is not None else 1)

    def bounds(self, group: ChannelGroup) -> tuple[int, int]:
        """Fewest and most channels ``group`` may keep (both allowed widths)."""
        floor = min(group.size, max(self.min_channels, group.size - math.floor(self.cap * group.size)))
        return self.snap_up(group, floor), group.size

    def snap_up(self, group: ChannelGroup, width: int) -> int:
        """The smallest allowed width >= ``width`` (the full width at most)."""
        step = self.step(group)
        return min(group.size, -(-max(width, 1) // step) * step)

    def snap(self, group: ChannelGroup, width: int) -> int:
        """The allowed width within :meth:`bounds` nearest ``width`` (the wider one on a tie)."""
        low, high = self.bounds(group)
        width = min(high, max(low, width))
        step = self.step(group)
        down = max(low, width // step * step)
        up = self.snap_up(group, width)
        return down if width - down < up - width else up

    def next_width(self, group: ChannelGroup, width: int, direction: int) -> int | None:
        """The allowed width next to ``width`` in ``direction`` (-1 narrower, +1 wider), or None
        at the bound."""
        low, high = self.bounds(group)
        if direction < 0:
            step = self.step(group)
            candidate = (width - 1) // step * step
            return candidate if candidate >= low and width > low else None
        candidate = self.snap_up(group, width + 1)
        return candidate if width < high else None

    def nearest(self, group: ChannelGroup, wanted: float) -> set[int]:
        """The allowed widths on either side of a real-valued width (within bounds)."""
        low, high = self.bounds(group)
        step = self.step(group)
        below = max(low, min(high, math.floor(wanted) // step * step))
        above = self.snap_up(group, min(high, max(low, math.ceil(wanted))))
        return {below, above}


def refine_to_target(
    space: PruningSpace,
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, int],
    target: float,
    intended: Mapping[str, float],
    grid: WidthGrid,
) -> dict[str, int]:
    """Single-layer moves (one allowed width narrower or wider) until the MAC reduction is near ``target``.

    While the reduction is more than half the tolerance away from the target, take the
    move that keeps the layer's ratio closest to its intended ratio among the moves that bring
    the reduction strictly closer. This keeps the schedule's shape (uniform stays near-uniform)
    while the integer widths close the gap. When no such single move exists (small models, where
    one width step is a large step), a compensated move is tried the same way: one layer a step
    narrower or wider, then other layers (one chosen first, then the rest in order) each set to
    the allowed width that best closes the remaining gap, until the reduction is within half the
    tolerance. ``keep`` must hold allowed widths (:meth:`WidthGrid.snap`).
    """
    keep = dict(keep)
    by_name = {g.name: g for g in groups}
    sizes = {g.name: g.size for g in groups}
    gap = abs(space.reduction(keep) - target)

    def moves_of(name: str, width: int):
        for direction in (-1, 1):
            new = grid.next_width(by_name[name], width, direction)
            if new is not None:
                yield new - width

    def best_of(moves):
        best = None
        for move in moves:
            for n, step in move:
                keep[n] += step
            new_gap = abs(space.reduction(keep) - target)
            deviation = sum(abs((1 - keep[n] / sizes[n]) - intended[n]) for n, _ in move)
            for n, step in move:
                keep[n] -= step
            if new_gap < gap - 1e-12:
                candidate = (deviation, new_gap, move)
                best = candidate if best is None or candidate < best else best
        return best

    def closest(trial, name):
        """The allowed width of ``name`` whose reduction is closest to the target."""
        lo, hi = grid.bounds(by_name[name])
        trial[name] = lo
        at_lo = space.reduction(trial)
        trial[name] = hi
        at_hi = space.reduction(trial)  # MACs are linear in each group's width
        wanted = hi if at_lo == at_hi else lo + (target - at_lo) * (hi - lo) / (at_hi - at_lo)

        def gap_at(w):
            trial[name] = w
            return abs(space.reduction(trial) - target)

        return min(sorted(grid.nearest(by_name[name], wanted)), key=gap_at)

    def compensated():
        moves = []
        for a in keep:
            for step in moves_of(a, keep[a]):
                for b in keep:
                    if b == a:
                        continue
                    trial = dict(keep)
                    trial[a] += step
                    for other in [b, *(n for n in keep if n not in (a, b))]:
                        if abs(space.reduction(trial) - target) <= FLOPS_TOLERANCE / 2:
                            break
                        trial[other] = closest(trial, other)
                    moves.append(tuple((n, trial[n] - keep[n]) for n in keep if trial[n] != keep[n]))
        return moves

    while gap > FLOPS_TOLERANCE / 2:
        singles = [((name, step),) for name in keep for step in moves_of(name, keep[name])]
        best = best_of(singles) or best_of(compensated())
        if best is None:
            break
        _, gap, move = best
        for name, step in move:
            keep[name] += step
    return keep
