"""The scoring budget of the layer games, in forward-pass equivalents.

One forward-pass equivalent is one forward of the whole model over the calibration images. A
coalition evaluated on ``k`` images through a part of the network that holds a fraction ``f`` of
the model's convolution/linear MACs costs ``k * f`` image forwards; the shared recording forward,
the one-image measuring pass and the fx/hooks agreement checks are charged the same way.
:class:`PassMeter` adds these up against the budget; :func:`plan_game` sizes one group's estimate
to the share of the budget it gets: as many permutations as fit (up to ``max_permutations``) on
``batch_size`` images per coalition, else fewer images per coalition, else (one image) coarse
permutations whose prefixes grow ``size / positions`` channels at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pruning.errors import InputError


class PassMeter:
    """Cost spent against ``budget`` forward passes over ``calibration_images`` images (None: no cap)."""

    def __init__(self, calibration_images: int, budget: float | None) -> None:
        if calibration_images < 1:
            raise InputError(f"calibration_images must be >= 1, got {calibration_images}")
        check_budget(budget)
        self.calibration_images = int(calibration_images)
        self.budget = budget
        self.image_forwards = 0.0

    def charge(self, images: float, fraction: float = 1.0) -> None:
        """Add ``images`` image forwards through ``fraction`` of the model."""
        self.image_forwards += float(images) * float(fraction)

    @property
    def spent(self) -> float:
        """Forward-pass equivalents spent so far."""
        return self.image_forwards / self.calibration_images

    @property
    def remaining(self) -> float:
        """Forward-pass equivalents left (inf without a budget; never below 0)."""
        return math.inf if self.budget is None else max(0.0, self.budget - self.spent)

    def share(self, groups_left: int) -> float:
        """An equal share of what remains for each of ``groups_left`` groups."""
        return self.remaining / max(1, groups_left)


def check_budget(budget: float | None) -> None:
    """Raise :class:`InputError` unless ``budget`` is a positive number of passes or None."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise InputError(f"max_forward_passes must be a finite number > 0 (forward passes over the calibration "
                         f"images) or None (no cap), got {budget!r}")


@dataclass(frozen=True)
class GamePlan:
    """How one group's game is estimated: ``permutations`` permutations whose prefixes are
    evaluated at ``positions - 1`` interior lengths (``positions == size``: every prefix), each
    coalition on the first ``images`` images of the game batch; ``exact``: enumeration instead."""

    images: int
    positions: int
    permutations: int
    exact: bool = False

    def __post_init__(self) -> None:
        if self.images < 1 or self.positions < 1 or self.permutations < 0:
            raise ValueError(f"invalid game plan {self}")

    def coalitions(self, size: int, extra_per_position: int = 0) -> int:
        """Coalitions this plan evaluates at most: both endpoints, then ``positions - 1`` prefixes
        per permutation (plus ``extra_per_position`` curves of as many points), or all 2^size."""
        if self.exact:
            return 2**size + extra_per_position * max(0, size - 1)
        return 2 + (self.permutations + extra_per_position) * max(0, self.positions - 1)


@dataclass(frozen=True)
class GameRequest:
    """What :func:`plan_game` sizes: a game of ``size`` players whose coalitions cost ``fraction``
    of a forward per image, at most ``images`` images per coalition and ``max_permutations``
    permutations (taken ``step`` at a time: 2 for antithetic pairs), enumeration when ``size <=
    exact_below``; ``curves`` more passes over the prefix positions follow the estimate (SNPFI's
    utilization curve)."""

    size: int
    fraction: float
    images: int
    max_permutations: int
    step: int = 1
    exact_below: int = 0
    curves: int = 0


def plan_game(request: GameRequest, share: float, calibration_images: int) -> GamePlan | None:
    """The richest plan whose cost fits ``share`` forward passes over ``calibration_images``
    images (``share`` inf: the full request), or None when not even the endpoints and one
    coarse permutation on one image fit."""
    r = request
    if r.size <= r.exact_below and _fits(GamePlan(r.images, r.size, 0, exact=True), r, share, calibration_images):
        return GamePlan(r.images, r.size, 0, exact=True)
    budget = math.inf if math.isinf(share) else share * calibration_images / max(r.fraction, 1e-12)
    if r.size < 2:  # the endpoints are the whole game
        images = min(r.images, int(budget // 2))
        return GamePlan(images, 1, r.step) if images >= 1 else None
    interior = r.size - 1
    if math.isinf(budget):
        return GamePlan(r.images, r.size, r.max_permutations)
    for images in (r.images, min(r.images, int(budget // (2 + (r.step + r.curves) * interior)))):
        if images < 1:
            continue
        fit = int((budget / images - 2) / interior) - r.curves
        permutations = min(r.max_permutations, fit)
        permutations -= permutations % r.step
        if permutations >= r.step:
            return GamePlan(images, r.size, permutations)
    positions = min(r.size, int((budget - 2) // (r.step + r.curves)) + 1)
    return GamePlan(1, positions, r.step) if positions >= 2 else None


def _fits(plan: GamePlan, request: GameRequest, share: float, calibration_images: int) -> bool:
    cost = plan.coalitions(request.size, request.curves) * plan.images * request.fraction
    return cost <= share * calibration_images
