"""Turn scores and a target into a pruning plan: how many channels each group keeps.

Allocations:

* ``uniform``: the same ratio in every selected group.
* ``global``: one ranking of layer-normalised scores across all selected groups, with a
  per-layer cap (``max_layer_ratio``) and a floor (``min_channels``).
* ``proportional`` (used by ``uniform`` with a FLOPs target and by prior-driven ratios such as
  information concentration): ratio_l = min(cap, s * w_l), with s found by bisection.
* an explicit schedule: a plain ``{layer name: ratio}`` mapping, read from / written to JSON.

Channel counts are integers, so a FLOPs target cannot be met by bisection on one number
alone (one channel of a 16-channel layer is 6%). After bisection, :func:`_refine_to_target`
moves single channels in individual layers until the MAC reduction is as close to the target
as a one-channel move allows, preferring layers whose ratio is furthest from the intended one.
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
from pruning.utils import atomic_write

ALLOCATIONS = ("uniform", "global")
#: the FLOPs target is met within this many fractions (1 percentage point)
FLOPS_TOLERANCE = 0.01


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
    """

    strategy: str = "full"
    allocation: str = "uniform"
    ratio: float | None = None
    flops_reduction: float | None = None
    schedule: Mapping[str, float] | None = None
    max_layer_ratio: float = 0.9
    min_channels: int = 1

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


def _bounds(group: ChannelGroup, cap: float, min_channels: int) -> tuple[int, int]:
    """Fewest and most channels a group may keep."""
    floor = min(group.size, max(min_channels, group.size - math.floor(cap * group.size)))
    return floor, group.size


def keep_from_ratios(groups: Sequence[ChannelGroup], ratios: Mapping[str, float], min_channels: int = 1) -> dict[str, int]:
    """Channels kept per group when removing ``round(ratio * size)`` (at least ``min_channels`` kept)."""
    keep = {}
    for g in groups:
        removed = round(ratios.get(g.name, 0.0) * g.size)
        keep[g.name] = max(min(min_channels, g.size), g.size - removed)
    return keep


def allocate_proportional(
    space: PruningSpace,
    groups: Sequence[ChannelGroup],
    weights: Mapping[str, float],
    flops_reduction: float,
    *,
    max_layer_ratio: float = 0.9,
    min_channels: int = 1,
) -> dict[str, int]:
    """Ratios ``min(cap, s * w_l)`` scaled by bisection on ``s`` to meet a FLOPs reduction.

    ``weights`` are non-negative per-group weights (1 everywhere = uniform). The result is then
    refined channel by channel to land within one channel-step of the target.
    """
    _check_fraction("flops_reduction", flops_reduction)
    missing = [g.name for g in groups if g.name not in weights]
    if missing:
        raise PruningError(f"no ratio weight for layer(s): {', '.join(missing)}")
    if any(weights[g.name] < 0 or not math.isfinite(weights[g.name]) for g in groups):
        raise PruningError("ratio weights must be finite and non-negative")
    _check_reachable(space, groups, flops_reduction, max_layer_ratio, min_channels)

    def plan(scale: float) -> dict[str, int]:
        ratios = {g.name: min(max_layer_ratio, scale * weights[g.name]) for g in groups}
        keep = keep_from_ratios(groups, ratios, min_channels)
        return {g.name: max(keep[g.name], _bounds(g, max_layer_ratio, min_channels)[0]) for g in groups}

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
    return _refine_to_target(space, groups, keep, flops_reduction, intended, max_layer_ratio, min_channels)


def _check_reachable(space, groups, flops_reduction, cap, min_channels) -> None:
    most = {g.name: _bounds(g, cap, min_channels)[0] for g in groups}
    reachable = space.reduction(most)
    if flops_reduction > reachable + FLOPS_TOLERANCE / 2:
        raise InfeasibleTargetError(
            f"FLOPs reduction {flops_reduction:.3f} cannot be met: at most {reachable:.3f} with "
            f"{len(groups)} prunable layer(s), per-layer cap {cap} and at least {min_channels} channel(s) kept"
        )


def _refine_to_target(space, groups, keep, target, intended, cap, min_channels) -> dict[str, int]:
    """Single-channel moves in individual layers until the MAC reduction is near ``target``.

    While the reduction is more than half the tolerance away from the target, take the
    move (one channel more or fewer in one layer) that keeps the layer's ratio closest to its
    intended ratio among the moves that bring the reduction strictly closer. This keeps the
    schedule's shape (uniform stays near-uniform) while the integer widths close the gap.
    When no such single move exists (small models, where one channel is a large step), a
    compensated move is tried the same way: one channel more or fewer in one layer, then other
    layers (one chosen first, then the rest in order) each set to the width within its bounds
    that best closes the remaining gap, until the reduction is within half the tolerance.
    """
    keep = dict(keep)
    bounds = {g.name: _bounds(g, cap, min_channels) for g in groups}
    sizes = {g.name: g.size for g in groups}
    gap = abs(space.reduction(keep) - target)

    def best_of(moves):
        best = None
        for move in moves:
            if not all(bounds[n][0] <= keep[n] + step <= bounds[n][1] for n, step in move):
                continue
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
        """The width of ``name`` (within its bounds) whose reduction is closest to the target."""
        lo, hi = bounds[name]
        trial[name] = lo
        at_lo = space.reduction(trial)
        trial[name] = hi
        at_hi = space.reduction(trial)  # MACs are linear in each group's width
        wanted = hi if at_lo == at_hi else lo + (target - at_lo) * (hi - lo) / (at_hi - at_lo)
        widths = {min(hi, max(lo, w)) for w in (math.floor(wanted), math.ceil(wanted))}

        def gap_at(w):
            trial[name] = w
            return abs(space.reduction(trial) - target)

        return min(sorted(widths), key=gap_at)

    def compensated():
        moves = []
        for a in keep:
            for step in (-1, 1):
                if not bounds[a][0] <= keep[a] + step <= bounds[a][1]:
                    continue
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

    singles = [((name, step),) for name in keep for step in (-1, 1)]
    while gap > FLOPS_TOLERANCE / 2:
        best = best_of(singles) or best_of(compensated())
        if best is None:
            break
        _, gap, move = best
        for name, step in move:
            keep[name] += step
    return keep


def allocate_global(
    space: PruningSpace,
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    *,
    ratio: float | None = None,
    flops_reduction: float | None = None,
    max_layer_ratio: float = 0.9,
    min_channels: int = 1,
) -> dict[str, int]:
    """Remove the globally lowest layer-normalised scores, for a channel ratio or a FLOPs target.

    Scores are divided by their layer's mean absolute value so layers of different scale
    compare. With a FLOPs target, a removal that would overshoot it by more than half the
    tolerance is skipped in favour of later (cheaper) channels; if that leaves the reduction
    short of the target, :func:`_refine_to_target` closes the gap.
    """
    if (ratio is None) == (flops_reduction is None):
        raise PruningError("give exactly one of ratio or flops_reduction")
    bounds = {g.name: _bounds(g, max_layer_ratio, min_channels) for g in groups}
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
        return keep
    _check_fraction("flops_reduction", flops_reduction)
    _check_reachable(space, groups, flops_reduction, max_layer_ratio, min_channels)
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
    return _refine_to_target(space, groups, keep, flops_reduction, intended, max_layer_ratio, min_channels)


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
        return keep_from_ratios(groups, config.schedule, config.min_channels)
    if config.allocation == "global":
        if ratio_weights is not None:
            raise PruningError("layer-wise ratio weights apply to the uniform allocation, not global")
        return allocate_global(
            space, groups, scores, ratio=config.ratio, flops_reduction=config.flops_reduction,
            max_layer_ratio=config.max_layer_ratio, min_channels=config.min_channels,
        )
    if config.ratio is not None:
        if ratio_weights is not None:
            raise PruningError("layer-wise ratio weights need a FLOPs target, not a ratio")
        return keep_from_ratios(groups, {g.name: config.ratio for g in groups}, config.min_channels)
    weights = ratio_weights if ratio_weights is not None else {g.name: 1.0 for g in groups}
    return allocate_proportional(
        space, groups, weights, config.flops_reduction,
        max_layer_ratio=config.max_layer_ratio, min_channels=config.min_channels,
    )


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
