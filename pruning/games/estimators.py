"""Shapley-value estimators for any :class:`~pruning.games.coalitions.CoalitionGame`.

* :func:`exact_shapley`: enumeration of all 2^C coalitions in one batched call (C <= 10).
* :func:`permutation_shapley`: Monte Carlo over permutations, with antithetic pairs, TMC
  truncation and a stop: ``epsilon`` (every standard error below it) or a
  :class:`BoundaryStop` (the keep/prune cut at a pruning ratio is decided).
* :class:`RunningStats`: the per-player Welford state of the samples, mergeable with Chan's
  formula, so that shards computed elsewhere (e.g. blocks on Ray actors) combine exactly;
  :class:`ShapleyEstimate` carries it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from pruning.errors import InputError
from pruning.games.coalitions import CoalitionGame, all_coalitions, game_endpoints

EXACT_MAX_SIZE = 10


@dataclass
class RunningStats:
    """Per-player running mean and variance (Welford), mergeable with Chan's parallel formula.

    ``n``, ``mean`` and ``m2`` are float64 tensors of length C (sum of squared deviations in m2),
    so shards run elsewhere (e.g. on Ray actors) can be merged exactly.
    """

    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def zeros(cls, size: int) -> RunningStats:
        z = torch.zeros(size, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone())

    def update(self, x: torch.Tensor) -> None:
        """Welford's update with one sample ``x: [C]`` (in place)."""
        x = x.to(torch.float64)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def update_many(self, xs: Iterable[torch.Tensor]) -> None:
        for x in xs:
            self.update(x)

    def merge(self, other: RunningStats) -> RunningStats:
        """Chan et al.'s pairwise combination of two disjoint sample sets (new object)."""
        n = self.n + other.n
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = other.mean - self.mean
        mean = torch.where(n > 0, self.mean + delta * other.n / safe, torch.zeros_like(n))
        m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / safe
        return RunningStats(n, mean, m2)

    @property
    def count(self) -> int:
        """The smallest per-player sample count."""
        return int(self.n.min().item()) if len(self.n) else 0

    def variance(self) -> torch.Tensor:
        """Unbiased sample variance (nan where n < 2)."""
        return torch.where(self.n > 1, self.m2 / (self.n - 1).clamp(min=1), torch.full_like(self.m2, float("nan")))

    def stderr(self) -> torch.Tensor:
        """Standard error of the mean (inf where n < 2)."""
        se = (self.variance() / self.n.clamp(min=1)).sqrt()
        return torch.where(self.n > 1, se, torch.full_like(se, float("inf")))


@dataclass(frozen=True)
class BoundaryStop:
    """Stop once the keep/prune cut at ``prune_ratio`` is decided.

    Pruning keeps the ``k = n - round(prune_ratio * n)`` highest values (as the planner removes
    ``round(ratio * n)``), so only the order across the cut matters, not every value's precision.
    The cut is decided once the confidence intervals ``mean +- z * stderr`` of the kept channels
    and those of the pruned ones overlap by at most ``margin`` channel shares,

        min over kept (mean - z se) >= max over pruned (mean + z se) - margin * |v(N) - v(empty)| / n,

    (|v(N) - v(empty)| / n is the mean Shapley value, by efficiency). Channels far from the cut
    pass at any precision; the ones ranked around it (the k-th and (k+1)-th first) decide when it
    stops. ``margin`` = 0 asks for full separation, which near-tied channels at the cut never
    reach; with ``margin`` > 0 channels whose values are that close count as interchangeable
    (swapping two of them costs about that much worth). Checked once every channel has
    ``min_samples`` samples (a standard error from fewer is too noisy to trust).
    """

    prune_ratio: float
    z: float = 2.0
    margin: float = 0.0
    min_samples: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in (0, 1), got {self.prune_ratio}")
        if not self.z > 0:
            raise ValueError(f"z must be > 0, got {self.z}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {self.min_samples}")

    def kept(self, size: int) -> int:
        """Channels kept of ``size``."""
        return size - round(self.prune_ratio * size)

    def overlap(self, stats: RunningStats, span: float) -> float:
        """How far the kept and pruned intervals overlap, in channel shares (``span / n``):
        max over pruned (mean + z se) - min over kept (mean - z se); <= 0 once separated, inf
        before ``min_samples``, -inf when nothing is cut."""
        size = len(stats.mean)
        k = self.kept(size)
        if k <= 0 or k >= size:
            return float("-inf")  # nothing to order across the cut
        if stats.count < self.min_samples:
            return float("inf")
        order = torch.argsort(stats.mean, descending=True, stable=True)
        half = self.z * stats.stderr()
        lower = (stats.mean - half)[order[:k]].min()
        upper = (stats.mean + half)[order[k:]].max()
        share = abs(span) / size
        gap = float(upper - lower)
        if share == 0.0:  # a layer that does not matter: any overlap is infinitely many shares
            return gap if gap <= 0 else float("inf")
        return gap / share

    def reached(self, stats: RunningStats, span: float) -> bool:
        """The cut is decided (``span`` = |v(N) - v(empty)|)."""
        return self.overlap(stats, span) <= self.margin


def stop_reached(stats: RunningStats, epsilon: float | None, boundary: BoundaryStop | None, span: float) -> bool:
    """The early stop of the estimators (in process and block merges alike): every standard error
    below ``epsilon``, or ``boundary`` reached (None: that rule off); ``span`` = |v(N) - v(empty)|."""
    if epsilon is not None and stats.count >= 2 and float(stats.stderr().max()) < epsilon:
        return True
    return boundary is not None and boundary.reached(stats, span)


@dataclass(frozen=True, eq=False)
class ShapleyEstimate:
    """Estimated Shapley values of one game.

    ``evaluations`` counts coalition values the estimator requested (v(N) and v(empty)
    included); for a :class:`LayerGame` each costs ``batch_size`` image forwards, see
    ``LayerGame.evaluations`` for the image count. ``permutations`` is 0 for exact enumeration.
    ``stats`` holds the per-player Welford state, for :meth:`merge`.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    permutations: int
    evaluations: int
    v_full: float
    v_empty: float
    stats: RunningStats | None = field(default=None, compare=False, repr=False)

    def merge(self, other: ShapleyEstimate) -> ShapleyEstimate:
        """Combine two independent permutation shards of the same game (Chan's formula)."""
        if self.stats is None or other.stats is None:
            raise ValueError("only permutation estimates (with stats) can be merged")
        stats = self.stats.merge(other.stats)
        return ShapleyEstimate(
            values=stats.mean.clone(),
            stderr=stats.stderr(),
            permutations=self.permutations + other.permutations,
            evaluations=self.evaluations + other.evaluations,
            v_full=self.v_full,
            v_empty=self.v_empty,
            stats=stats,
        )


def exact_shapley(game: CoalitionGame) -> ShapleyEstimate:
    """Exact Shapley values by enumerating all 2^C coalitions in one batched call (C <= 10).

    phi_i = sum_{S subset N\\{i}} |S|! (C-|S|-1)! / C! * (v(S + i) - v(S)).
    """
    n = game.size
    if n > EXACT_MAX_SIZE:
        raise ValueError(f"exact enumeration is limited to {EXACT_MAX_SIZE} players, got {n}")
    v = game.values(all_coalitions(n)).to(torch.float64)
    index = torch.arange(2**n)
    sizes = all_coalitions(n).sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)], dtype=torch.float64)
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        without = index[(index >> i) & 1 == 0]
        phi[i] = (weight[sizes[without]] * (v[without | (1 << i)] - v[without])).sum()
    return ShapleyEstimate(phi, torch.zeros(n, dtype=torch.float64), 0, 2**n, float(v[-1]), float(v[0]))


def prefix_lengths(size: int, positions: int) -> list[int]:
    """The interior prefix lengths a permutation is evaluated at: all of 1..size-1 when
    ``positions >= size``, else the ``positions - 1`` lengths round(j * size / positions)."""
    if positions >= size:
        return list(range(1, size))
    return sorted({round(j * size / positions) for j in range(1, positions)} - {0, size})


def interpolate_prefixes(known: torch.Tensor, points: list[int], n: int) -> torch.Tensor:
    """Prefix values at every length 0..n from those at ``points``, linear in between: the
    marginal of the players added between two evaluated lengths is shared equally."""
    if len(points) == n + 1:
        return known
    pv = torch.empty(known.shape[0], n + 1, dtype=torch.float64)
    for j in range(len(points) - 1):
        a, b = points[j], points[j + 1]
        t = torch.arange(b - a + 1, dtype=torch.float64) / (b - a)
        pv[:, a : b + 1] = known[:, j : j + 1] + (known[:, j + 1 : j + 2] - known[:, j : j + 1]) * t
    return pv


def _prefix_values(
    game: CoalitionGame,
    perms: np.ndarray,
    endpoints: tuple[float, float],
    truncation_tol: float | None,
    window: int,
    positions: int | None = None,
) -> tuple[torch.Tensor, int]:
    """v(first k players of each permutation) for k = 0..C -> ``float64[P, C+1]`` and the number
    of coalitions evaluated. Without truncation, one batched call; with truncation, windows of
    ``window`` prefix lengths (more when the game's ``min_coalitions`` asks for more per call)
    over the still-active permutations, and a permutation whose prefix
    value comes within ``truncation_tol`` of v(N) keeps that value to the end (TMC-Shapley).
    ``positions`` < C evaluates only :func:`prefix_lengths` and interpolates the rest."""
    v_full, v_empty = endpoints
    p, n = perms.shape
    lengths = prefix_lengths(n, n if positions is None else positions)
    points = [0, *lengths, n]
    ranks = torch.from_numpy(np.argsort(perms, axis=1))  # ranks[p, i] = position of player i
    known = torch.empty(p, len(points), dtype=torch.float64)
    known[:, 0] = v_empty
    known[:, -1] = v_full
    if n < 2 and truncation_tol is None:
        return interpolate_prefixes(known, points, n), 0
    if truncation_tol is None:
        k = torch.tensor(lengths, dtype=torch.long)
        masks = ranks[:, None, :] < k[None, :, None]
        known[:, 1:-1] = game.values(masks.reshape(-1, n)).view(p, len(lengths))
        return interpolate_prefixes(known, points, n), p * len(lengths)
    used = 0
    active = torch.ones(p, dtype=torch.bool)
    if abs(v_empty - v_full) < truncation_tol:
        known[:, 1:] = v_empty
        return interpolate_prefixes(known, points, n), 0
    # a call of a few coalitions on a few images wastes most of its time: each window takes at
    # least the game's efficient call (its ``min_coalitions`` attribute, when it has one)
    least = int(getattr(game, "min_coalitions", 1))
    start = 1
    while start < len(points) - 1:
        rows = active.nonzero().flatten()
        if len(rows) == 0:
            break
        cols = torch.arange(start, min(start + max(window, -(-least // len(rows))), len(points) - 1))
        start = int(cols[-1]) + 1
        k = torch.tensor(points, dtype=torch.long)[cols]
        masks = ranks[rows][:, None, :] < k[None, :, None]
        vals = game.values(masks.reshape(-1, n)).view(len(rows), len(k))
        used += vals.numel()
        known[rows[:, None], cols[None, :]] = vals
        close = (vals - v_full).abs() < truncation_tol
        for r, row in zip(rows.tolist(), close):
            hits = row.nonzero()
            if len(hits):
                cut = int(cols[hits[0, 0]])
                known[r, cut + 1 :] = known[r, cut]
                active[r] = False
    return interpolate_prefixes(known, points, n), used


@dataclass(frozen=True)
class PermutationSampling:
    """How :func:`permutation_shapley` samples: the budget, the pairing, TMC truncation, the
    early stop and the prefix positions (each described there). Checked when built; a bad
    field raises :class:`~pruning.errors.InputError` naming it."""

    max_permutations: int = 64
    epsilon: float | None = None
    boundary: BoundaryStop | None = None
    antithetic: bool = False
    truncation_tol: float | None = None
    batch_permutations: int = 16
    truncation_window: int | None = None
    positions: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_permutations", "batch_permutations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be >= 1, got {value!r}")
        for name in ("truncation_window", "positions"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be an integer >= 1 or None, got {value!r}")


def permutation_shapley(
    game: CoalitionGame,
    sampling: PermutationSampling = PermutationSampling(),
    seed: int | np.random.SeedSequence = 0,
) -> ShapleyEstimate:
    """Monte Carlo Shapley values from marginal contributions along random permutations.

    Each permutation pi gives one sample per player, v(pre_i(pi) + i) - v(pre_i(pi)); the prefix
    values of ``batch_permutations`` permutations are evaluated in one batched call. The fields
    of ``sampling`` (:class:`PermutationSampling`):

    * ``antithetic``: every permutation is followed by its reverse; the pair's average is one
      sample (so the variance reflects the pairing). ``max_permutations`` is rounded down to
      an even number (at least 2) and counts both members of a pair.
    * ``truncation_tol`` (absolute, in units of v): TMC-Shapley; once |v(prefix) - v(N)| <
      tol the remaining marginals of that permutation are 0 (bias at most tol per permutation).
      Prefixes are then evaluated in windows of ``truncation_window`` lengths (default
      max(1, C // 4)) so that truncated permutations stop costing evaluations.
    * ``epsilon``: stop once the largest per-player standard error is below it; ``boundary``:
      stop once the keep/prune cut is decided (:class:`BoundaryStop`). Both are checked after
      every block (:func:`stop_reached`); with neither, run until ``max_permutations``.
    * ``positions`` (< C; None: C): coarse permutations for a small budget: prefixes are
      evaluated at ``positions - 1`` evenly spaced lengths only (:func:`prefix_lengths`), and the
      players added between two of them share that step's marginal equally. The sum over the
      players is still v(N) - v(empty); each channel's sample is its step's mean, so the values
      shrink towards the layer's mean (a channel's order among its step's is not resolved by
      one permutation, only across permutations).

    Deterministic given ``seed`` (a private ``numpy.random.Generator``). Without truncation the
    marginals of every permutation sum to exactly v(N) - v(empty).
    """
    n = game.size
    max_permutations, antithetic = sampling.max_permutations, sampling.antithetic
    batch_permutations, positions = sampling.batch_permutations, sampling.positions
    rng = np.random.default_rng(seed)
    v_full, v_empty = game_endpoints(game)
    evaluations = 2
    step = 2 if antithetic else 1
    budget = max(step, max_permutations - max_permutations % step)
    block_size = max(step, batch_permutations - batch_permutations % step)
    positions = n if positions is None else max(1, min(int(positions), n))
    window = sampling.truncation_window or max(1, positions // 4)
    stats = RunningStats.zeros(n)
    done = 0
    while done < budget:
        count = min(block_size, budget - done)
        base = [rng.permutation(n) for _ in range(count // step)]
        perms = np.stack([q for b in base for q in ((b, b[::-1]) if antithetic else (b,))])
        pv, used = _prefix_values(game, perms, (v_full, v_empty), sampling.truncation_tol, window, positions)
        evaluations += used
        marginals = pv[:, 1:] - pv[:, :-1]  # [P, n]: contribution of perms[p, k]
        phi = torch.zeros(len(perms), n, dtype=torch.float64).scatter_(1, torch.from_numpy(perms.copy()), marginals)
        if antithetic:
            phi = phi.view(-1, 2, n).mean(1)
        stats.update_many(phi)
        done += len(perms)
        if stop_reached(stats, sampling.epsilon, sampling.boundary, v_full - v_empty):
            break
    return ShapleyEstimate(stats.mean.clone(), stats.stderr(), done, evaluations, v_full, v_empty, stats)
