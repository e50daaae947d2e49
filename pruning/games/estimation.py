"""How the ``shapley`` / ``snpfi`` criteria estimate a layer game, in one place.

:class:`ShapleyOptions` holds every estimation option; :func:`estimate_shapley` applies them to
one game, in this process. The distributed estimator (``orchestrator.distributed``) takes the
same options object and cuts the same budget into blocks (:mod:`pruning.games.blocks`), so no
option is ever copied between the two by name. :func:`calibration_batch` picks the images the
worth is computed on (``ShapleyOptions.game_batch`` as the options say) and :func:`group_seed`
the random stream of a group.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pruning.class_scores import check_class_scores
from pruning.errors import InputError
from pruning.games.budget import GamePlan, GameRequest, check_budget
from pruning.games.coalitions import CoalitionGame, game_endpoints
from pruning.games.estimators import (
    EXACT_MAX_SIZE,
    BoundaryStop,
    ShapleyEstimate,
    exact_shapley,
    PermutationSampling,
    permutation_shapley,
)
from pruning.games.layer import MODES, GameSettings
from pruning.tasks import Task, list_tasks, task_class



@dataclass(frozen=True)
class ShapleyOptions:
    """Estimation options of a layer game (defaults chosen to stay cheap).

    ``max_permutations`` permutations (in antithetic pairs with ``antithetic``), evaluated
    ``batch_permutations`` at a time (the block size when distributed); TMC truncation once
    |v(prefix) - v(N)| < ``truncation`` * |v(N) - v(empty)| (None: off), prefixes then evaluated
    in windows of ``truncation_window`` lengths; an early stop once every standard error is below
    ``epsilon``, or once the keep/prune cut at the pruned fraction ``boundary`` is decided at
    ``boundary_z`` standard errors up to ``boundary_margin`` channel shares
    (:class:`~pruning.games.estimators.BoundaryStop`; None: off, at most one of the two).
    Groups with at most ``exact_below`` channels (capped at 10) are enumerated exactly. The worth is ``value`` (one of the task's
    :attr:`~pruning.tasks.Task.game_values`; None: its first, classification's ``logprob``) on ``batch_size`` calibration images: the first
    ones, or with ``stratified`` equally many of each class, drawn with the criterion's seed
    (:func:`calibration_batch`); ``mode`` picks the evaluation path of
    :class:`~pruning.games.layer.LayerGame` and ``max_batch`` bounds the images per forward.
    ``class_scores``: ``"pooled"`` (one game over the whole batch) or ``"max"`` (with
    ``stratified``: one game per class on that class's images, a channel's value its largest
    over the classes, :func:`estimate_class_max`; the stopping rules apply to each class's game).

    ``max_forward_passes``: the scoring budget, in forward passes of the whole model over the
    calibration images (None: no cap). It bounds everything the criterion runs in this process
    (the recorded forward, the agreement checks, every coalition; :mod:`pruning.games.budget`):
    the game batch holds at most a quarter of it in images (:meth:`game_images`), and each
    group gets an equal share of what is left when its turn comes, spent as
    :func:`pruning.games.budget.plan_game` says (fewer permutations, then fewer images per
    coalition, then coarser permutations).
    """

    max_permutations: int = 8
    epsilon: float | None = None
    boundary: float | None = None
    boundary_z: float = 2.0
    boundary_margin: float = 0.0
    value: str | None = None
    batch_size: int = 32
    stratified: bool = False
    antithetic: bool = True
    truncation: float | None = 0.02
    batch_permutations: int = 8
    truncation_window: int | None = None
    exact_below: int = 0
    mode: str = "auto"
    max_batch: int | None = None
    class_scores: str = "pooled"
    max_forward_passes: float | None = 1.0

    def __post_init__(self) -> None:
        check_budget(self.max_forward_passes)
        check_class_scores(self.class_scores)
        if self.class_scores == "max" and not self.stratified:
            raise InputError("class_scores 'max' needs stratified=True (every class's images in the game batch)")
        if self.value is not None and self.value not in (known := known_game_values()):
            raise InputError(f"unknown value {self.value!r}; valid: {', '.join(known)}")
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        counts = (self.max_permutations, self.batch_size, self.batch_permutations)
        if min(counts) < 1 or (self.max_batch is not None and self.max_batch < 1):
            raise InputError("max_permutations, batch_size, batch_permutations and max_batch must be >= 1")
        if self.truncation is not None and self.truncation < 0:
            raise InputError("truncation must be >= 0 or None")
        if self.truncation_window is not None and self.truncation_window < 1:
            raise InputError(f"truncation_window must be >= 1 or None, got {self.truncation_window}")
        if self.epsilon is not None and self.epsilon <= 0:
            raise InputError(f"epsilon must be > 0 or None, got {self.epsilon}")
        if self.boundary is not None and not 0.0 < self.boundary < 1.0:
            raise InputError(f"boundary must be a pruned fraction in (0, 1) or None, got {self.boundary}")
        if self.boundary is not None and self.epsilon is not None:
            raise InputError(f"give epsilon or boundary, not both (epsilon={self.epsilon}, boundary={self.boundary})")
        if not self.boundary_z > 0:
            raise InputError(f"boundary_z must be > 0, got {self.boundary_z}")
        if not self.boundary_margin >= 0:
            raise InputError(f"boundary_margin must be >= 0, got {self.boundary_margin}")
        # frozen: the cap is applied once, here, so every reader sees the effective value
        object.__setattr__(self, "exact_below", min(int(self.exact_below), EXACT_MAX_SIZE))

    def boundary_stop(self) -> BoundaryStop | None:
        """The boundary stop rule, or None when ``boundary`` is off."""
        return None if self.boundary is None else BoundaryStop(self.boundary, self.boundary_z, self.boundary_margin)

    def game_batch(self, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and targets every layer game is computed on (:func:`calibration_batch`):
        :meth:`game_images` of them."""
        count = self.game_images(sum(len(x) for x, _ in calibration))
        return calibration_batch(calibration, count, stratified=self.stratified, seed=seed)

    def game_images(self, calibration_images: int) -> int:
        """Images of the game batch: ``batch_size``, or fewer so that recording them costs at
        most a quarter of the budget (at least 1)."""
        if self.max_forward_passes is None:
            return self.batch_size
        return max(1, min(self.batch_size, int(self.max_forward_passes * calibration_images / 4)))

    def request(self, size: int, fraction: float, images: int, curves: int = 0) -> GameRequest:
        """What :func:`~pruning.games.budget.plan_game` sizes for a game of ``size`` players whose
        coalitions cost ``fraction`` of a forward per image, on ``images`` images."""
        step = 2 if self.antithetic else 1
        return GameRequest(size=size, fraction=fraction, images=images,
                           max_permutations=max(step, self.max_permutations - self.max_permutations % step),
                           step=step, exact_below=self.exact_below, curves=curves)

    def game_settings(self, task: Task, mode: str | None = None) -> GameSettings:
        """The :class:`~pruning.games.GameSettings` of these options' games for ``task`` (``mode``: a
        resolved mode instead of :attr:`mode`, see :func:`~pruning.games.resolve_trace`)."""
        return GameSettings(value=self.value, mode=self.mode if mode is None else mode, max_batch=self.max_batch,
                            task=task)

    def class_labels_reason(self) -> str | None:
        """Why these options need class-index targets (None: they do not)."""
        if self.class_scores != "pooled":
            return f"per-class games (class_scores {self.class_scores!r})"
        return "class-stratified game batches (stratified)" if self.stratified else None

    def truncation_tol(self, game: CoalitionGame) -> float | None:
        """The absolute TMC tolerance for ``game``: ``truncation`` x |v(N) - v(empty)|."""
        if self.truncation is None:
            return None
        v_full, v_empty = game_endpoints(game)
        return self.truncation * abs(v_full - v_empty)


def estimate_shapley(game: CoalitionGame, options: ShapleyOptions, seed: int,
                     plan: GamePlan | None = None) -> ShapleyEstimate:
    """Shapley values of ``game`` as ``options`` say: exact enumeration for at most
    ``exact_below`` players, else permutation sampling seeded with ``seed``; a ``plan`` (sized to
    a budget, :func:`~pruning.games.budget.plan_game`) overrides enumeration, the number of
    permutations and their positions (the game's images are set by the caller)."""
    if plan is None:
        plan = GamePlan(1, game.size, options.max_permutations, exact=game.size <= options.exact_below)
    if plan.exact:
        return exact_shapley(game)
    sampling = PermutationSampling(
        max_permutations=plan.permutations,
        positions=plan.positions,
        epsilon=options.epsilon,
        boundary=options.boundary_stop(),
        antithetic=options.antithetic,
        truncation_tol=options.truncation_tol(game),
        batch_permutations=options.batch_permutations,
        truncation_window=options.truncation_window,
    )
    return permutation_shapley(game, sampling, seed)


def estimate_class_max(class_games: Sequence[CoalitionGame], options: ShapleyOptions, seed: int,
                       plans: Sequence[GamePlan | None] | None = None) -> ShapleyEstimate:
    """Each player's largest Shapley value over ``class_games``: the same players, each game's
    worth on one class's images. With equally many images per class the pooled game's worth is
    the mean of the class games' worths, so its Shapley values are the mean of theirs (linearity):
    a channel that carries one class scores 1/K of its value there when pooled, and is pruned
    first; its maximum keeps it. The stderr is that of the class giving the maximum; the costs
    add up; v(N) and v(empty) are the pooled game's (the class means). Class k's game is
    estimated with its own stream from ``seed`` and k, with ``plans[k]`` (None: ``options``)."""
    if not class_games:
        raise InputError("no class games to estimate")
    streams = np.random.SeedSequence(int(seed)).spawn(len(class_games))
    plans = [None] * len(class_games) if plans is None else plans
    estimates = [estimate_shapley(game, options, int(stream.generate_state(1)[0]), plan)
                 for game, stream, plan in zip(class_games, streams, plans)]
    values = torch.stack([e.values for e in estimates])
    best = values.argmax(0, keepdim=True)
    return ShapleyEstimate(
        values=values.gather(0, best)[0],
        stderr=torch.stack([e.stderr for e in estimates]).gather(0, best)[0],
        permutations=sum(e.permutations for e in estimates),
        evaluations=sum(e.evaluations for e in estimates),
        v_full=float(np.mean([e.v_full for e in estimates])),
        v_empty=float(np.mean([e.v_empty for e in estimates])),
    )


def calibration_batch(
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    *,
    stratified: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` calibration images (concatenated across batches) and their targets.

    Default: the first ``batch_size``. ``stratified``: ``batch_size // K`` images of each of the
    K classes present in the calibration targets, drawn without replacement with ``seed``, the
    ``batch_size % K`` left over going one each to classes drawn with the same seed (so counts
    are equal when ``batch_size`` is a multiple of K); ordered by class. The first images of a
    split are whatever classes happen to come first, so a small first-images batch can miss
    classes altogether; a stratified one weighs every class equally.
    """
    if not stratified:
        xs, ys, total = [], [], 0
        for x, y in calibration:
            xs.append(x)
            ys.append(y)
            total += len(x)
            if total >= batch_size:
                break
        if not xs:
            raise InputError("no calibration batches")
        return torch.cat(xs)[:batch_size], torch.cat(ys)[:batch_size]
    if not calibration:
        raise InputError("no calibration batches")
    inputs = torch.cat([x for x, _ in calibration])
    targets = torch.cat([y for _, y in calibration])
    classes = torch.unique(targets).tolist()
    rng = np.random.default_rng(seed)
    counts = np.full(len(classes), batch_size // len(classes))
    counts[rng.choice(len(classes), batch_size % len(classes), replace=False)] += 1
    chosen = []
    for label, count in zip(classes, counts):
        pool = (targets == label).nonzero().flatten().numpy()
        if len(pool) < count:
            raise InputError(f"stratified batch of {batch_size}: class {label} has {len(pool)} calibration "
                             f"images, needs {count}; use more calibration images or a smaller batch_size")
        chosen.append(np.sort(rng.choice(pool, int(count), replace=False)))
    index = torch.from_numpy(np.concatenate(chosen))
    return inputs[index], targets[index]


def known_game_values() -> list[str]:
    """Every game value some registered task plays for (a task checks its own when scoring)."""
    return sorted({value for name in list_tasks() for value in task_class(name).game_values})


def group_seed(seed: int, name: str) -> int:
    """A per-group seed from the criterion seed and the group's name: independent streams per
    group, and a group's estimate does not depend on which other groups are scored."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])
