"""Turn scores and a target into a pruning plan: how many channels each group keeps.

Allocations:

* ``uniform``: the same ratio in every selected group.
* ``global``: one ranking of layer-normalised scores across all selected groups, with a
  per-layer cap (``max_layer_ratio``) and a floor (``min_channels``).
* ``proportional`` (used by ``uniform`` with a FLOPs target and by prior-driven ratios such as
  information concentration): ratio_l = min(cap, s * w_l), with s found by bisection.
* an explicit schedule: a plain ``{layer name: ratio}`` mapping, read from / written to JSON.

Channel counts are integers (and, with ``round_to``, multiples of it), so a FLOPs target
cannot be met by bisection on one number alone. After bisection,
:func:`pruning.planning.widths.refine_to_target` moves single layers one allowed width at a time
until the MAC reduction is as close to the target as such a move allows.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from pruning.structure.engine import STRATEGIES, PruningError, PruningSpace
from pruning.structure.groups import ChannelGroup
from pruning.planning.widths import FLOPS_TOLERANCE, WidthGrid, refine_to_target
from pruning.utils import atomic_write

ALLOCATIONS = ("uniform", "global")


class InfeasibleTargetError(PruningError):
    """The requested FLOPs reduction is out of reach under the strategy, cap and floor."""


def _check_fraction(name: str, value: float) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0.0 <= value < 1.0 and math.isfinite(value)):
        raise PruningError(f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune: exactly one of ``ratio``, ``flops_reduction`` or ``schedule``.

    ratio: fraction of channels removed (per layer for ``uniform``, overall for ``global``).
    flops_reduction: fraction of MACs to remove, met within 1 percentage point.
    schedule: explicit ``{layer name: ratio}``; layers not named keep all their channels.
    round_to: kept channel counts are multiples of this (a layer keeps all its channels where it
        has fewer): 8 or 16 for fast inference; 1 (the default) for any count.
    """

    strategy: str = "full"
    allocation: str = "uniform"
    ratio: float | None = None
    flops_reduction: float | None = None
    schedule: Mapping[str, float] | None = None
    max_layer_ratio: float = 0.9
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PruningError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.allocation not in ALLOCATIONS:
            raise PruningError(f"unknown allocation {self.allocation!r}; valid: {', '.join(ALLOCATIONS)}")
        given = [n for n in ("ratio", "flops_reduction", "schedule") if getattr(self, n) is not None]
        if len(given) != 1:
            raise PruningError(
                f"give exactly one of ratio, flops_reduction, schedule (got {', '.join(given) or 'none'})"
            )
        if self.ratio is not None:
            _check_fraction("ratio", self.ratio)
        if self.flops_reduction is not None:
            _check_fraction("flops_reduction", self.flops_reduction)
        for layer, r in (self.schedule or {}).items():
            _check_fraction(f"ratio of layer {layer!r}", r)
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise PruningError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio!r}")
        if self.min_channels < 1:
            raise PruningError(f"min_channels must be >= 1, got {self.min_channels!r}")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise PruningError(f"round_to must be an integer >= 1, got {self.round_to!r}")

    @property
    def grid(self) -> WidthGrid:
        """The widths a layer may keep under this config's cap, floor and rounding."""
        return WidthGrid(cap=self.max_layer_ratio, min_channels=self.min_channels, round_to=self.round_to)


def keep_from_ratios(groups: Sequence[ChannelGroup], ratios: Mapping[str, float], min_channels: int = 1,
                     round_to: int = 1) -> dict[str, int]:
    """Channels kept per group when removing ``round(ratio * size)`` (at least ``min_channels``
    kept), rounded to the nearest allowed width (:class:`WidthGrid`: multiples of ``round_to``
    and of the group's unit width, or the full width)."""
    keep = {}
    for g in groups:
        removed = round(ratios.get(g.name, 0.0) * g.size)
        width = max(min(min_channels, g.size), g.size - removed)
        if round_to > 1 or g.units.width > 1:
            width = WidthGrid(cap=1.0, min_channels=min_channels, round_to=round_to).snap(g, width)
        keep[g.name] = width
    return keep


def allocate_proportional(
    space: PruningSpace,
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, float],
    flops_reduction: float,
    grid: WidthGrid = WidthGrid(),
) -> dict[str, int]:
    """Ratios ``min(grid.cap, s * w_l)`` scaled by bisection on ``s`` to meet a FLOPs reduction,
    widths on ``grid``.

    ``weights`` are non-negative per-group weights (1 everywhere = uniform). The result is then
    refined one allowed width at a time to land within one width step of the target.
    """
    max_layer_ratio, min_channels = grid.cap, grid.min_channels
    _check_fraction("flops_reduction", flops_reduction)
    missing = [g.name for g in groups if g.name not in weights]
    if missing:
        raise PruningError(f"no ratio weight for layer(s): {', '.join(missing)}")
    if any(weights[g.name] < 0 or not math.isfinite(weights[g.name]) for g in groups):
        raise PruningError("ratio weights must be finite and non-negative")
    _check_reachable(space, groups, flops_reduction, grid)

    def plan(scale: float) -> dict[str, int]:
        ratios = {g.name: min(max_layer_ratio, scale * weights[g.name]) for g in groups}
        keep = keep_from_ratios(groups, ratios, min_channels)
        return {g.name: grid.snap(g, keep[g.name]) for g in groups}

    top = max((weights[g.name] for g in groups), default=0.0)
    low, high = 0.0, (max_layer_ratio / min(w for w in (weights[g.name] for g in groups) if w > 0)) if top > 0 else 0.0
    for _ in range(60):
        mid = (low + high) / 2
        if space.reduction(plan(mid)) >= flops_reduction:
            high = mid
        else:
            low = mid
    keep = plan(high)
    intended = {g.name: min(max_layer_ratio, high * weights[g.name]) for g in groups}
    return refine_to_target(space, groups, keep, flops_reduction, intended, grid)


def reachable_reduction(space: PruningSpace, groups: Sequence[ChannelGroup], grid: WidthGrid = WidthGrid()) -> float:
    """The largest MAC reduction ``groups`` of ``space`` can reach with widths on ``grid``."""
    return space.reduction({g.name: grid.bounds(g)[0] for g in groups})


def _check_reachable(space, groups, flops_reduction, grid: WidthGrid) -> None:
    reachable = reachable_reduction(space, groups, grid)
    if flops_reduction > reachable + FLOPS_TOLERANCE / 2:
        rounding = f", widths multiples of {grid.round_to}" if grid.round_to > 1 else ""
        raise InfeasibleTargetError(
            f"FLOPs reduction {flops_reduction:.3f} cannot be met: at most {reachable:.3f} with "
            f"{len(groups)} prunable layer(s), per-layer cap {grid.cap} and at least {grid.min_channels} "
            f"channel(s) kept{rounding}"
        )


def allocate_global(
    space: PruningSpace,
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    *,
    ratio: float | None = None,
    flops_reduction: float | None = None,
    grid: WidthGrid = WidthGrid(),
) -> dict[str, int]:
    """Remove the globally lowest layer-normalised scores, for a channel ratio or a FLOPs target.

    Scores are divided by their layer's mean absolute value so layers of different scale
    compare. With a FLOPs target, a removal that would overshoot it by more than half the
    tolerance is skipped in favour of later (cheaper) channels; if that leaves the reduction
    short of the target, :func:`pruning.planning.widths.refine_to_target` closes the gap. With
    ``grid.round_to`` > 1 the ranked widths are then rounded to the nearest allowed ones (and, with
    a target, refined on that grid).
    """
    if (ratio is None) == (flops_reduction is None):
        raise PruningError("give exactly one of ratio or flops_reduction")
    bounds = {g.name: grid.bounds(g) for g in groups}
    ranked = sorted(
        (float(value), g.name, i)
        for g in groups
        for i, value in enumerate((scores[g.name] / (scores[g.name].abs().mean() + 1e-12)).tolist())
    )
    keep = {g.name: g.size for g in groups}
    if ratio is not None:
        _check_fraction("ratio", ratio)
        budget = round(ratio * sum(g.size for g in groups))
        for _, name, _ in ranked:
            if budget == 0:
                break
            if keep[name] > bounds[name][0]:
                keep[name] -= 1
                budget -= 1
        return {g.name: grid.snap(g, keep[g.name]) for g in groups}
    _check_fraction("flops_reduction", flops_reduction)
    _check_reachable(space, groups, flops_reduction, grid)
    for _, name, _ in ranked:
        if space.reduction(keep) >= flops_reduction:
            break
        if keep[name] <= bounds[name][0]:
            continue
        keep[name] -= 1
        if space.reduction(keep) > flops_reduction + FLOPS_TOLERANCE / 2:
            keep[name] += 1
    # skipped overshoots can leave it short of the target: close the gap around this shape
    intended = {g.name: 1.0 - keep[g.name] / g.size for g in groups}
    keep = {g.name: grid.snap(g, keep[g.name]) for g in groups}
    return refine_to_target(space, groups, keep, flops_reduction, intended, grid)


def plan_pruning(
    space: PruningSpace,
    scores: Mapping[str, torch.Tensor],
    config: PruningConfig,
    ratio_weights: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Channels to keep per group for ``config``.

    ``ratio_weights`` (e.g. from information concentration) replace the uniform weights of a
    FLOPs-targeted ``uniform`` allocation with layer-wise ones.
    """
    groups = space.select(config.strategy)
    if config.schedule is not None:
        allowed = {g.name for g in groups}
        unknown = [n for n in config.schedule if n not in allowed]
        if unknown:
            raise PruningError(
                f"schedule names layer(s) not prunable under strategy {config.strategy!r}: "
                f"{', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
            )
        return keep_from_ratios(groups, config.schedule, config.min_channels, config.round_to)
    if config.allocation == "global":
        if ratio_weights is not None:
            raise PruningError("layer-wise ratio weights apply to the uniform allocation, not global")
        return allocate_global(space, groups, scores, ratio=config.ratio, flops_reduction=config.flops_reduction,
                               grid=config.grid)
    if config.ratio is not None:
        if ratio_weights is not None:
            raise PruningError("layer-wise ratio weights need a FLOPs target, not a ratio")
        return keep_from_ratios(groups, {g.name: config.ratio for g in groups}, config.min_channels, config.round_to)
    weights = ratio_weights if ratio_weights is not None else {g.name: 1.0 for g in groups}
    return allocate_proportional(space, groups, weights, config.flops_reduction, config.grid)


def ratios_of(space: PruningSpace, keep: Mapping[str, int]) -> dict[str, float]:
    """The explicit schedule (layer -> removed fraction) that reproduces ``keep``."""
    return {name: 1.0 - k / space[name].size for name, k in keep.items()}


def save_schedule(path: str | os.PathLike, schedule: Mapping[str, float]) -> None:
    """Write ``{layer: ratio}`` as JSON, atomically."""
    text = json.dumps(dict(schedule), indent=2, sort_keys=True)  # fails before any file is touched
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_schedule(path: str | os.PathLike) -> dict[str, float]:
    """Read a ``{layer: ratio}`` JSON schedule, checking its shape and values."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PruningError(f"schedule file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PruningError(f"schedule file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    ):
        raise PruningError(f"schedule file {str(path)!r} must hold a JSON object of layer name -> ratio")
    for layer, r in data.items():
        _check_fraction(f"ratio of layer {layer!r}", r)
    return {str(k): float(v) for k, v in data.items()}
