"""Shapley channel importance within a layer (information concentration + Shapley values)."""
from __future__ import annotations

import copy
import time
from typing import ClassVar, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.criteria._base import Batch, Criterion, register_criterion
from pruning.errors import InputError
from pruning.games import (
    GamePlan,
    GameSharing,
    LayerGame,
    PassMeter,
    ShapleyEstimate,
    ShapleyOptions,
    estimate_class_max,
    estimate_shapley,
    group_seed,
    plan_game,
    resolve_trace,
    shared_forward,
)
from pruning.structure import ChannelGroup
from pruning.tasks import Task


class ShapleyEstimator(Protocol):
    """Estimates every group at once somewhere other than this process (the estimation hook of
    :class:`ShapleyChannels`; ``orchestrator.distributed.DistributedShapley`` uses Ray actors).

    Called with the model, the groups, the calibration batches, the criterion's options and
    seed and the task the games play for; returns ``{group name: ShapleyEstimate}`` for every group.
    """

    def __call__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        calibration: Sequence[Batch],
        options: ShapleyOptions,
        seed: int,
        task: Task,
    ) -> Mapping[str, ShapleyEstimate]: ...


@register_criterion("shapley")
class ShapleyChannels(Criterion):
    """Shapley value of each channel in the coalition game of its layer,

        phi_i = sum_{S subset N\\{i}} |S|! (n-|S|-1)! / n! * (v(S + i) - v(S)),

    where N are the group's n channels and v(S) is the task's worth (:meth:`pruning.tasks.Task.game_value`;
    classification's default: the mean log-probability of the true class) on a fixed calibration batch of ``batch_size`` images with the channels outside S zeroed at every
    observed output of the group (:class:`pruning.games.LayerGame`; ``value`` may also be
    ``"accuracy"``, ``"margin"`` or ``"kl"``: minus the KL divergence from the unpruned
    network's output distribution, 0 at the full layer, no labels). The batch is the first
    calibration images, or with ``stratified`` equally many per class drawn with ``seed``. With
    ``class_scores="max"`` (stratified only) each class's images are a game of their own and a
    channel scores its largest value over the classes: pooled, a channel that only one class
    needs scores 1/K of its value there (:func:`pruning.games.estimate_class_max`).

    Chen & Wang, "An Effective Information Theoretic Framework for Channel Pruning",
    arXiv:2408.16772 (Shapley values select the channels; their information concentration sets
    the layer ratios and is a separate criterion/ratio source).

    The options (:class:`pruning.games.ShapleyOptions`, in ``options``) default to a cheap
    estimate: Monte Carlo permutation sampling with ``max_permutations`` permutations in
    antithetic pairs, TMC truncation at ``truncation`` * |v(N) - v(empty)| (None: off), an
    optional early stop when every standard error is below ``epsilon`` or, for pruning at the
    fraction ``boundary``, once the channels around the keep/prune cut are separated
    (:class:`pruning.games.BoundaryStop` with ``boundary_z``, ``boundary_margin``), exact
    enumeration only for groups with at most ``exact_below`` channels (0 = never; capped at 10). Each group uses its
    own seed derived from ``seed`` and the group name. ``mode`` picks the evaluation path
    (``auto``: fx downstream-only re-execution, falling back to full forwards with hooks);
    ``max_batch`` bounds the images per forward. Per-group cost and mode of the last ``score``
    call are in ``last_report``.

    ``max_forward_passes`` (default 1.0; None: no cap) is the scoring budget in forward passes of
    the whole model over the calibration images: everything the criterion runs is charged to it
    (one recorded forward of the game batch shared by all groups, agreement checks, every
    coalition at the share of the model's MACs it re-executes), each group gets an equal share
    of what is left when its turn comes, and a share too small for the options is spent on
    fewer permutations, then fewer images per coalition, then coarser permutations
    (:func:`pruning.games.plan_game`); a group that cannot get one coarse permutation on one
    image is not estimated (all its scores 0). :attr:`budget_report` states the budget and what
    was spent. With an ``estimator`` the estimates are made elsewhere and not charged here.

    Estimation hook: ``estimator`` (a :class:`ShapleyEstimator`, None by default) computes the
    estimates elsewhere; :meth:`delegate_estimation` returns a copy of the criterion that uses one.
    """

    needs_calibration: ClassVar[bool] = True

    # long signature: each keyword is a criterion option by name (create_criterion, the CLI's
    # --criterion-options, sweep configs), and the registry lists the valid ones from it
    def __init__(
        self,
        seed: int = 0,
        max_permutations: int = 8,
        epsilon: float | None = None,
        boundary: float | None = None,
        boundary_z: float = 2.0,
        boundary_margin: float = 0.0,
        value: str | None = None,
        batch_size: int = 32,
        stratified: bool = False,
        antithetic: bool = True,
        truncation: float | None = 0.02,
        batch_permutations: int = 8,
        exact_below: int = 0,
        mode: str = "auto",
        max_batch: int | None = None,
        class_scores: str = "pooled",
        max_forward_passes: float | None = 1.0,
    ) -> None:
        super().__init__(seed)
        self.options = ShapleyOptions(
            max_permutations=max_permutations,
            epsilon=epsilon,
            boundary=boundary,
            boundary_z=boundary_z,
            boundary_margin=boundary_margin,
            value=value,
            batch_size=batch_size,
            stratified=stratified,
            antithetic=antithetic,
            truncation=truncation,
            batch_permutations=batch_permutations,
            exact_below=exact_below,
            mode=mode,
            max_batch=max_batch,
            class_scores=class_scores,
            max_forward_passes=max_forward_passes,
        )
        self.estimator: ShapleyEstimator | None = None
        self.last_report: dict[str, dict] = {}
        self.budget_report: dict = {}
        #: what scoring in this process has spent; set by :meth:`estimates`
        self.meter: PassMeter | None = None
        #: coalition curves over the prefix positions a subclass evaluates after each estimate
        self.curves_after_estimate = 0
        #: passes spent when the group being yielded by :meth:`estimates` started
        self.group_started = 0.0

    def delegate_estimation(self, estimator: ShapleyEstimator) -> ShapleyChannels:
        """A copy of this criterion whose estimates come from ``estimator``, all groups in one call.

        Scores, SNPFI's sparsities and :meth:`estimates` work unchanged; the games are still built
        in this process (SNPFI's utilization curves evaluate them). Per-class games
        (``class_scores="max"``) are estimated in this process only.
        """
        if self.options.class_scores != "pooled":
            raise InputError(f"class_scores {self.options.class_scores!r} is estimated in this process only; "
                             "run without Ray workers for it")
        delegated = copy.copy(self)
        delegated.estimator = estimator
        delegated.last_report = {}
        return delegated

    def needs_class_labels(self) -> str | None:
        return self.options.class_labels_reason()

    def check_context(self, context) -> None:
        super().check_context(context)
        if self.options.value is not None:
            context.task.check_game_value(self.options.value)

    def games(self, model, groups, context) -> Iterator[LayerGame]:
        """One :class:`LayerGame` per group on the calibration batch (with ``class_scores="max"``:
        on the first class's images), built lazily and sharing one fx trace and one recorded
        forward (charged to :attr:`meter`)."""
        for game, _ in self._games(model, groups, context):
            yield game

    def _games(self, model, groups, context) -> Iterator[tuple[LayerGame, list[LayerGame] | None]]:
        """Per group: its game on the calibration batch and None, or with ``class_scores="max"``
        the first class's game and one game per class on that class's images of the batch (each
        class's games share one recorded forward of its images)."""
        self.check_context(context)
        if not groups:
            return
        options = self.options
        images = sum(len(x) for x, _ in context.calibration)
        self.meter = meter = PassMeter(images, None if self.estimator is not None else options.max_forward_passes)
        inputs, targets = options.game_batch(context.calibration, self.seed)
        # per class, its images of the batch: one game, and one recorded forward, per class
        batches = ([(inputs, targets)] if options.class_scores == "pooled" else
                   [(inputs[targets == c], targets[targets == c]) for c in torch.unique(targets).tolist()])
        _check_overhead(meter, len(inputs))
        mode, traced = resolve_trace(model, options.mode)
        forwards: list = [None] * len(batches)
        if mode != "hooks":
            for k, (x, _) in enumerate(batches):
                forwards[k] = shared_forward(model, traced, x, groups, like=forwards[0])
                meter.charge(forwards[k].images_forwarded if forwards[k] is not None else 0)
        settings = options.game_settings(context.task, mode)
        for index, group in enumerate(groups):
            games = [LayerGame(model, group, x, y, settings,
                               GameSharing(traced=traced, forward=forward, check_hooks=index == k == 0, meter=meter))
                     for k, ((x, y), forward) in enumerate(zip(batches, forwards))]
            yield games[0], (games if options.class_scores == "max" else None)

    def _plan(self, game: LayerGame, share: float) -> GamePlan | None:
        """The plan of ``game`` within ``share`` passes (sets the game's images)."""
        request = self.options.request(game.size, game.fraction, game.batch_size, self.curves_after_estimate)
        plan = plan_game(request, share, self.meter.calibration_images)
        if plan is not None:
            game.images = plan.images
        return plan

    def estimates(self, model, groups, context) -> Iterator[tuple[str, LayerGame, ShapleyEstimate]]:
        """Yield ``(group name, game, estimate)`` group by group; fills ``last_report`` and
        ``budget_report``.

        Without an ``estimator`` each game is estimated here as it is built, within its share of
        the budget; with one, every group is estimated in one call before the first is yielded
        (``estimate_seconds`` is then None: the estimator reports its own cost). A group the
        budget cannot reach yields zeros (``estimated`` False in its report).
        """
        self.check_context(context)
        groups = list(groups)
        delegated = None
        if self.estimator is not None:
            delegated = self.estimator(model, groups, context.calibration, self.options, self.seed, context.task)
        self.last_report = {}
        bar = tqdm(total=len(groups), desc="scoring", unit="layer", disable=not context.progress, leave=False)
        for index, (game, class_games) in enumerate(self._games(model, groups, context)):
            name = game.group.name
            start = time.perf_counter()
            before = self.meter.spent
            share = self.meter.share(len(groups) - index)
            plan = None
            if delegated is not None:
                est = delegated[name]
            elif class_games is not None:
                plans = [self._plan(g, share / len(class_games)) for g in class_games]
                est = (estimate_class_max(class_games, self.options, group_seed(self.seed, name), plans)
                       if all(p is not None for p in plans) else _unestimated(game.size))
                plan = plans[0]
            else:
                plan = self._plan(game, share)
                est = (estimate_shapley(game, self.options, group_seed(self.seed, name), plan)
                       if plan is not None else _unestimated(game.size))
            images = (est.evaluations * game.images if class_games is None
                      else sum(g.evaluations for g in class_games))
            self.last_report[name] = {
                "mode": game.mode,
                "fallback_reason": game.fallback_reason,
                "permutations": est.permutations,
                "coalitions": est.evaluations,
                "image_evaluations": images,
                "max_stderr": _largest_finite(est.stderr),
                # game construction excluded
                "estimate_seconds": time.perf_counter() - start if delegated is None else None,
                **self._plan_report(game, plan, share, delegated is not None),
            }
            self.group_started = before
            yield name, game, est
            self.last_report[name]["passes"] = self.meter.spent - before
            bar.update()
        bar.close()
        self.budget_report = self._summary(groups)

    def _plan_report(self, game: LayerGame, plan: GamePlan | None, share: float, delegated: bool) -> dict:
        """What a group's estimate was given: its share of the budget, the plan, whether the
        budget cut it short of the options (``truncated``)."""
        if delegated:
            return {"estimated": True, "truncated": False, "budget_passes": None}
        options = self.options
        full = options.request(game.size, game.fraction, game.batch_size)
        unbounded = plan_game(full, float("inf"), self.meter.calibration_images)
        return {
            "estimated": plan is not None,
            "truncated": plan != unbounded,
            "budget_passes": share,
            "images_per_coalition": plan.images if plan else 0,
            "positions": plan.positions if plan else 0,
            "permutations_planned": plan.permutations if plan else 0,
            "cost_fraction": game.fraction,
        }

    def _summary(self, groups) -> dict:
        """The budget and what this scoring call spent, for the command line and JSON reports."""
        reports = [self.last_report[g.name] for g in groups if g.name in self.last_report]
        return {
            "max_forward_passes": self.meter.budget,
            "passes_spent": self.meter.spent,
            "calibration_images": self.meter.calibration_images,
            "game_images": self.options.game_images(self.meter.calibration_images),
            "groups": len(reports),
            "groups_truncated": sum(bool(r["truncated"]) for r in reports),
            "groups_not_estimated": sum(not r["estimated"] for r in reports),
            "permutations": sum(r["permutations"] for r in reports),
            "truncated": any(r["truncated"] for r in reports),
            "charged_here": self.estimator is None,
        }

    def score(self, model, groups, context):
        return {
            name: torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
            for name, _, est in self.estimates(model, groups, context)
        }


def _unestimated(size: int) -> ShapleyEstimate:
    """The estimate of a group the budget did not reach: no information, every value 0."""
    zero = torch.zeros(size, dtype=torch.float64)
    return ShapleyEstimate(zero, torch.full_like(zero, float("inf")), 0, 0, 0.0, 0.0)


def _largest_finite(stderr: torch.Tensor) -> float | None:
    """The largest standard error, None where there is none (no estimate, a single sample)."""
    if not len(stderr):
        return 0.0
    largest = float(stderr.max())
    return largest if largest != float("inf") and largest == largest else None


#: image forwards the recorded forwards cost besides their batch: the measuring image and the
#: first game's check of 2 coalitions on one image against the hooks path (at most 2 + 2)
_FORWARD_OVERHEAD_IMAGES = 5


def _check_overhead(meter: PassMeter, game_images: int) -> None:
    """Raise :class:`InputError` when the budget cannot pay for the recorded forward itself."""
    if meter.budget is None:
        return
    needed = (game_images + _FORWARD_OVERHEAD_IMAGES) / meter.calibration_images
    if needed > meter.budget:
        raise InputError(f"max_forward_passes {meter.budget} is below the {needed:.3g} passes that recording the "
                         f"game batch takes on {meter.calibration_images} calibration images; raise it")
