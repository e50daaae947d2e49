"""Progressive pruning: reach a plan's widths in steps, re-scoring the channels between them.

One-shot pruning removes every planned channel at once, ranked on the unpruned network. At high
compression that is where the accuracy goes (docs/benchmarks.md, "Progressive pruning"). A
recipe with ``steps: N`` (:class:`~pruning.recovery.RecoveryRecipe`) takes the plan's final
widths as fixed, and reaches them in ``N`` prunings of a shrinking model; after each step but the
last, the recipe's reconstruction and BN recalibration (and ``step_finetune_batches`` of SGD) run,
and the next step's criterion scores the network as it then is. The final step is followed by the
recipe's own stages, as after a one-shot pruning.

Widths per step (:func:`step_widths`):

* ``step_order: together``: every planned layer shrinks a little at every step. The MACs left
  fall geometrically: after step ``s`` of ``N`` the model keeps ``(1 - R) ** (s / N)`` of the
  unpruned MACs, ``R`` the plan's reduction; so every step removes the same fraction of what is
  left (linear steps would leave the last step the harshest cut: 4 linear steps to -90% remove
  70% of the MACs left at the last). A step's widths interpolate each layer between its full and
  its final width (in units, for grouped layers), at the one fraction of the way that meets the
  step's MACs.
* ``step_order: from_input``: one contiguous block of layers at a time, from the input side
  (ThiNet's layer order), each pruned to its final width in one go, so that every reconstruction
  fits layers whose inputs are already pruned. The blocks split the planned layers (in call
  order) where the MACs removed come closest to the same geometric schedule.

Steps that would change no width (small models, many steps) are dropped, so a plan may take
fewer steps than asked. Intermediate widths never grow, and the last step's are the plan's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from pruning.criteria import Criterion, ScoringContext, statistics_options
from pruning.pipeline import PruneOutcome, check_scores
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace, prune_model

__all__ = ["STEP_ORDERS", "Rescorer", "StepResult", "step_widths", "prune_step"]

#: how a progressive recipe orders its prunings (see the module docstring)
STEP_ORDERS = ("together", "from_input")
#: bisection rounds on the interpolation fraction (far below one channel of any layer)
_BISECTIONS = 40


@dataclass(frozen=True)
class Rescorer:
    """How a progressive recipe scores the channels of the partly pruned model: ``criterion``
    with ``context`` (its calibration batches, device, progress); a criterion that reads
    activation statistics gets them collected afresh on that model, over ``context.calibration``,
    with ``stats_options`` (None: :func:`~pruning.criteria.statistics_options` of the criterion,
    as a sweep collects them). ``example_inputs``: traces the partly pruned model."""

    criterion: Criterion
    example_inputs: Any
    context: ScoringContext = field(default_factory=ScoringContext)
    stats_options: StatsOptions | None = None

    def score(self, model: nn.Module, space: PruningSpace, names: list[str]) -> dict[str, torch.Tensor]:
        """Scores of the groups ``names`` of ``model`` (whose space is ``space``)."""
        groups = [space[name] for name in names]
        context = self.context
        if self.criterion.needs_stats:
            options = self.stats_options or statistics_options([self.criterion])
            stats = collect_activation_stats(model, groups, context.calibration, options)
            context = ScoringContext(calibration=context.calibration, stats=stats, device=context.device,
                                     progress=context.progress)
        scores = self.criterion.score(model, groups, context)
        check_scores(self.criterion, groups, scores)
        return scores


@dataclass(frozen=True)
class StepResult:
    """One step of a progressive recipe: ``number`` (from 1), the MACs reduction its widths
    reach (``macs_reduction``, of the unpruned model's), ``seconds`` of its stages (``scored``,
    ``pruned``, then for every step but the last the recovery stages it ran), and ``score``
    after its recovery (None: not scored, or the last step, whose stages the result holds)."""

    number: int
    macs_reduction: float
    seconds: dict[str, float]
    score: float | None = None


def step_widths(space: PruningSpace, keep: Mapping[str, int], steps: int, order: str) -> list[dict[str, int]]:
    """The widths after each step (``{group: kept channels}``, pruned groups only), the last
    the plan ``keep``'s; one entry when ``steps`` is 1 or the plan prunes nothing."""
    if order not in STEP_ORDERS:
        raise ValueError(f"unknown step order {order!r}; valid: {', '.join(STEP_ORDERS)}")
    final = {name: k for name, k in keep.items() if k < space[name].size}
    if steps == 1 or not final:
        return [final]
    reduction = space.reduction(final)
    targets = [1.0 - (1.0 - reduction) ** (s / steps) for s in range(1, steps)]
    if order == "together":
        widths = [_interpolated(space, final, _fraction_for(space, final, target)) for target in targets]
    else:
        widths = _input_side_blocks(space, final, targets)
    widths.append(final)
    distinct = [w for i, w in enumerate(widths) if w and (i == 0 or w != widths[i - 1])]
    return distinct


def _interpolated(space: PruningSpace, final: Mapping[str, int], t: float) -> dict[str, int]:
    """Each group ``t`` of the way (in units) from its full width to its final width."""
    widths = {}
    for name, k in final.items():
        group = space[name]
        unit = group.units.width
        full, kept = group.size // unit, k // unit
        width = (full - round(t * (full - kept))) * unit
        if width < group.size:
            widths[name] = width
    return widths


def _fraction_for(space: PruningSpace, final: Mapping[str, int], target: float) -> float:
    """The interpolation fraction whose widths' MACs reduction is closest to ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        if space.reduction(_interpolated(space, final, mid)) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda t: abs(space.reduction(_interpolated(space, final, t)) - target))


def _input_side_blocks(space: PruningSpace, final: Mapping[str, int], targets: list[float]) -> list[dict[str, int]]:
    """Prefixes of the planned groups in call order, each the one closest to its MACs target."""
    position = {name: i for i, name in enumerate(space.call_order)}
    ordered = sorted(final, key=lambda name: min(position.get(p, len(position)) for p in space[name].producers))
    reductions = [space.reduction({name: final[name] for name in ordered[:count]}) for count in range(len(ordered) + 1)]
    widths, count = [], 0
    for target in targets:
        count = min(range(count, len(ordered) + 1), key=lambda c: (abs(reductions[c] - target), c))
        widths.append({name: final[name] for name in ordered[:count]})
    return widths


def prune_step(current: PruneOutcome, widths: Mapping[str, int], rescorer: Rescorer,
               scores: Mapping[str, torch.Tensor] | None = None) -> tuple[PruneOutcome, dict[str, float]]:
    """Prune ``current`` (an outcome of the unpruned space ``current.space``; its model the
    unpruned one itself before the first step) further, to ``widths``: the groups that shrink are
    scored on ``current.model`` by ``rescorer`` (or read from ``scores``, the plan's, on the
    unpruned model) and cut to their new width. Returns the new outcome, its kept indices those
    of the unpruned model's channels, and the seconds of ``scored`` and ``pruned``."""
    started = time.perf_counter()
    model = current.model
    space = current.space if not current.kept_indices else PruningSpace.build(model, rescorer.example_inputs)
    shrinking = [name for name, k in widths.items() if k < space[name].size]
    if scores is None:
        scores = rescorer.score(model, space, shrinking)
    scored = time.perf_counter()
    pruned, kept = prune_model(model, rescorer.example_inputs, space, {n: widths[n] for n in shrinking}, scores)
    composed = dict(current.kept_indices)
    for name, indices in kept.items():
        composed[name] = composed[name][indices] if name in composed else indices
    keep = {**current.keep, **widths}
    seconds = {"scored": scored - started, "pruned": time.perf_counter() - scored}
    return PruneOutcome(pruned, current.space, keep, composed, current.scores), seconds
