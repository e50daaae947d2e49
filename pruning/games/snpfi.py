"""SNPFI: filter utilization strength, automatic layer sparsity and pairwise interactions.

Tang, Wei & Li, "Structured Network Pruning by Measuring Filter-wise Interactions",
arXiv:2307.00758. A layer's filters are the players of a coalition game whose worth is the
log-probability of the true class (``LayerGame(value="logprob")``); a filter's importance is its
Shapley value (:mod:`pruning.games.estimators`).

* Utilization strength of the top-k filters: U(k) = (v(top_k) - v(empty)) / (v(N) - v(empty)),
  k = 0..n, top_k = the k most important filters. U(0) = 0 and U(n) = 1.
* Automatic sparsity: 1 - k*/n with k* the smallest k >= ``min_keep`` with U(k) >= tau.
* Shapley interaction index of a pair (Grabisch & Roubens 1999):
  I_ij = sum_{S subset N\\{i,j}} |S|! (n-|S|-2)! / (n-1)! * (v(S+i+j) - v(S+i) - v(S+j) + v(S)).
  The weights are the distribution of "the players before the merged player {i,j} in a random
  order of the n-1 players (N\\{i,j}) + {ij}"; sampling S that way gives an unbiased estimate.
  (Taking S = "the players before both i and j" in a random order of all n players is *not*
  this distribution: it over-weights large S by n / (2(n-|S|-1)).)
* Interaction-aware utilization (our construction; the paper measures interactions but ranks
  filters by Shapley value alone): order the filters greedily by the second-order marginal
  m_i(S) = phi_i - 1/2 sum_{j in P(i)} I_ij + sum_{j in S cap P(i)} I_ij (P(i): the partners i
  was paired with), which is the exact marginal v(S+i) - v(S) of a game with interactions of
  order <= 2 when every pair is measured. Redundant filters have I_ij < 0: once one of two
  duplicates is kept the other's marginal drops by |I_ij| and it moves down the order. U(k) is
  then the worth of the first k of that order (:func:`interaction_utilization`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import torch

from pruning.errors import InputError
from pruning.games.coalitions import CoalitionGame, all_coalitions
from pruning.games.estimators import interpolate_prefixes, prefix_lengths

#: slack when comparing U(k) with tau (U is a ratio of float64 sums)
_TAU_SLACK = 1e-9


def utilization_curve(game: CoalitionGame, importance: torch.Tensor, order: Sequence[int] | None = None,
                      positions: int | None = None) -> torch.Tensor:
    """U(k) for k = 0..n -> ``float64[n+1]``; all n+1 coalitions in one batched call, or with
    ``positions`` < n (a small budget) only k = 0, n and the ``positions - 1`` lengths of
    :func:`~pruning.games.estimators.prefix_lengths`, linear in between.

    top_k = the first k of ``order`` (a permutation of the players) when given, else the k of
    highest ``importance``, ties broken by the lower index. When v(N) == v(empty) (the layer does
    not matter) the curve is 0 at k = 0 and 1 from k = 1 on.
    """
    n = game.size
    importance = torch.as_tensor(importance).flatten()
    if importance.numel() != n:
        raise ValueError(f"need {n} importance values, got {importance.numel()}")
    if order is None:
        order = importance_order(importance)
    else:
        order = torch.as_tensor(order, dtype=torch.long).flatten()
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError(f"order must be a permutation of 0..{n - 1}")
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    points = [0, *prefix_lengths(n, n if positions is None else positions), n]
    masks = rank[None, :] < torch.tensor(points)[:, None]
    known = game.values(masks).to(torch.float64)
    v = known if len(points) == n + 1 else interpolate_prefixes(known[None], points, n)[0]
    span = v[n] - v[0]
    if abs(float(span)) < 1e-12:
        curve = torch.ones(n + 1, dtype=torch.float64)
        curve[0] = 0.0
        return curve
    curve = (v - v[0]) / span
    curve[0], curve[n] = 0.0, 1.0
    return curve


def importance_order(importance: torch.Tensor) -> torch.Tensor:
    """Players by decreasing importance, ties broken by the lower index."""
    return torch.argsort(torch.as_tensor(importance).flatten().double(), descending=True, stable=True)


def sparsity_from_curve(curve: torch.Tensor, tau: float = 0.95, min_keep: int = 1) -> float:
    """1 - k*/n, k* the smallest k >= min_keep with curve[k] >= tau."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    n = len(curve) - 1
    if not 0 <= min_keep <= n:
        raise ValueError(f"min_keep must be in [0, {n}], got {min_keep}")
    ok = (curve >= tau - _TAU_SLACK).nonzero().flatten()
    ok = ok[ok >= min_keep]
    k = int(ok[0]) if len(ok) else n
    return 1.0 - k / n


def snpfi_sparsity(game: CoalitionGame, importance: torch.Tensor, tau: float = 0.95, *, min_keep: int = 1) -> float:
    """SNPFI's automatic sparsity of a layer: 1 - k*/n (see :func:`sparsity_from_curve`).

    ``min_keep`` (default 1) keeps at least one channel, since a group cannot be emptied.
    """
    return sparsity_from_curve(utilization_curve(game, importance), tau, min_keep)


def _pairs(n: int, pairs, rng: np.random.Generator) -> list[tuple[int, int]]:
    every = list(combinations(range(n), 2))
    if pairs is None:
        return every
    if isinstance(pairs, (int, np.integer)):
        if pairs < 1:
            raise ValueError("pairs must be >= 1")
        if pairs >= len(every):
            return every
        chosen = rng.choice(len(every), size=int(pairs), replace=False)
        return [every[i] for i in sorted(chosen)]
    out = [(int(i), int(j)) for i, j in pairs]
    for i, j in out:
        if i == j or not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"invalid pair ({i}, {j}) for {n} players")
    return out


def pairwise_interactions(
    game: CoalitionGame,
    pairs: int | Sequence[tuple[int, int]] | None = None,
    *,
    samples: int = 32,
    seed: int = 0,
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Sampled Shapley interaction indices -> (pairs, ``float64[P]``).

    ``pairs``: None = all pairs, an int = that many distinct random pairs, or explicit pairs.
    Each of the ``samples`` draws per pair costs 4 coalitions; all P * samples * 4 coalitions go
    to the game in one batched call (it chunks them). S is drawn as: |S| uniform on 0..n-2, then
    S uniform of that size among N\\{i,j} -- exactly the Shapley-interaction weights.
    """
    n = game.size
    if n < 2:
        raise ValueError("interactions need at least 2 players")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    rng = np.random.default_rng(seed)
    chosen = _pairs(n, pairs, rng)
    masks = np.zeros((len(chosen), samples, 4, n), dtype=bool)
    for p, (i, j) in enumerate(chosen):
        others = np.array([k for k in range(n) if k not in (i, j)], dtype=np.int64)
        for s in range(samples):
            size = int(rng.integers(0, n - 1))  # 0..n-2
            members = rng.permutation(others)[:size]
            base = masks[p, s, 0]
            base[members] = True
            masks[p, s, 1] = base
            masks[p, s, 1, i] = True
            masks[p, s, 2] = base
            masks[p, s, 2, j] = True
            masks[p, s, 3] = masks[p, s, 1]
            masks[p, s, 3, j] = True
    v = game.values(torch.from_numpy(masks.reshape(-1, n))).view(len(chosen), samples, 4)
    delta = v[..., 3] - v[..., 1] - v[..., 2] + v[..., 0]
    return chosen, delta.mean(1)


def mean_interaction(
    game: CoalitionGame,
    *,
    pairs: int | Sequence[tuple[int, int]] | None = None,
    samples: int = 32,
    seed: int = 0,
    absolute: bool = False,
) -> float:
    """Mean (of |I_ij| when ``absolute``) of the sampled pairwise interaction indices."""
    _, values = pairwise_interactions(game, pairs, samples=samples, seed=seed)
    return float((values.abs() if absolute else values).mean())


def exact_interaction(game: CoalitionGame, i: int, j: int) -> float:
    """The Shapley interaction index of (i, j) by enumeration (small games, n <= 12)."""
    n = game.size
    if n > 12:
        raise ValueError("exact enumeration is limited to 12 players")
    if i == j:
        raise ValueError("i and j must differ")
    v = game.values(all_coalitions(n)).to(torch.float64)
    index = torch.arange(2**n)
    base = index[((index >> i) & 1 == 0) & ((index >> j) & 1 == 0)]
    sizes = all_coalitions(n)[base].sum(1)
    weight = torch.tensor(
        [math.factorial(int(s)) * math.factorial(n - int(s) - 2) / math.factorial(n - 1) for s in sizes],
        dtype=torch.float64,
    )
    bi, bj = 1 << i, 1 << j
    delta = v[base | bi | bj] - v[base | bi] - v[base | bj] + v[base]
    return float((weight * delta).sum())


def interaction_order(
    importance: torch.Tensor, pairs: Sequence[tuple[int, int]], interactions: torch.Tensor
) -> torch.Tensor:
    """Players in the greedy order of the second-order marginal (see the module docstring).

    Start from S = {} and repeatedly add the player outside S of largest
    m_i(S) = phi_i - 1/2 sum_{j in P(i)} I_ij + sum_{j in S cap P(i)} I_ij, ties broken by the
    lower index; ``pairs`` and ``interactions`` are the measured I_ij (pairs not given count as 0,
    so with no pairs this is the order of ``importance``). NaN values count as 0.
    """
    phi = torch.nan_to_num(torch.as_tensor(importance).flatten().double(), nan=0.0, posinf=0.0, neginf=0.0).numpy()
    n = len(phi)
    values = torch.nan_to_num(torch.as_tensor(interactions).flatten().double(), nan=0.0).numpy()
    if len(values) != len(pairs):
        raise ValueError(f"need one interaction per pair, got {len(values)} for {len(pairs)} pairs")
    matrix = np.zeros((n, n))
    for (i, j), value in zip(pairs, values):
        if i == j or not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"invalid pair ({i}, {j}) for {n} players")
        matrix[i, j] = matrix[j, i] = value
    gain = phi - 0.5 * matrix.sum(1)
    taken = np.zeros(n, dtype=bool)
    order = []
    for _ in range(n):
        pick = int(np.argmax(np.where(taken, -np.inf, gain)))  # first maximum: the lower index
        order.append(pick)
        taken[pick] = True
        gain = gain + matrix[pick]
    return torch.tensor(order, dtype=torch.long)


@dataclass(frozen=True)
class InteractionUtilization:
    """What :func:`interaction_utilization` measured for one layer.

    curve: U(k) over ``order``; order: the greedy second-order order; pairs, interactions: the
    measured I_ij; plain_cut: k* of the plain (Shapley-order) curve, around which the pairs were
    taken; coalitions: coalitions evaluated for the interactions (4 per sample and pair) and the
    curve (n + 1).
    """

    curve: torch.Tensor
    order: torch.Tensor
    pairs: list[tuple[int, int]]
    interactions: torch.Tensor
    plain_cut: int
    coalitions: int


def cut_window(n: int, cut: int, window: int) -> list[int]:
    """Order positions of the ``window`` players centred on position ``cut`` (clipped to 0..n-1)."""
    window = min(max(window, 0), n)
    start = min(max(cut - window // 2, 0), n - window)
    return list(range(start, start + window))


@dataclass(frozen=True)
class PairSampling:
    """Which pairs :func:`interaction_utilization` measures and how: every pair among the
    ``window`` players around the cut (< 2: none), ``samples`` samples of each pair's
    interaction, or all its coalitions with ``exact`` (small games). Checked when built."""

    window: int = 8
    samples: int = 8
    exact: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise InputError(f"window must be an integer >= 0 (0 = off), got {self.window!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise InputError(f"samples must be an integer >= 1, got {self.samples!r}")


def interaction_utilization(
    game: CoalitionGame,
    importance: torch.Tensor,
    sampling: PairSampling = PairSampling(),
    *,
    tau: float = 0.95,
    seed: int = 0,
    min_keep: int = 1,
) -> InteractionUtilization:
    """The interaction-aware utilization curve of one layer.

    The pairs are every pair among the ``sampling.window`` players around the plain curve's cut k*
    (positions k* - window/2 ..., in the Shapley order at ``tau``): there the order decides what
    is kept. Their I_ij are sampled with :func:`pairwise_interactions` (``sampling.samples`` per
    pair, ``seed``), or enumerated with ``sampling.exact`` (small games). Cost: window (window - 1)
    / 2 * samples * 4 coalitions plus the two curves' 2 (n + 1). ``window`` < 2 measures nothing
    and returns the plain curve.
    """
    window, samples, exact = sampling.window, sampling.samples, sampling.exact
    n = game.size
    importance = torch.as_tensor(importance).flatten()
    plain_order = importance_order(importance)
    plain = utilization_curve(game, importance, plain_order)
    cut = round((1.0 - sparsity_from_curve(plain, tau, min_keep)) * n)
    players = sorted(int(plain_order[p]) for p in cut_window(n, cut, window))
    pairs = list(combinations(players, 2))
    if not pairs:
        return InteractionUtilization(plain, plain_order, [], torch.zeros(0, dtype=torch.float64), cut, n + 1)
    if exact:
        values = torch.tensor([exact_interaction(game, i, j) for i, j in pairs], dtype=torch.float64)
        spent = 0
    else:
        pairs, values = pairwise_interactions(game, pairs, samples=samples, seed=seed)
        values = values.to(torch.float64)
        spent = len(pairs) * samples * 4
    order = interaction_order(importance, pairs, values)
    curve = plain if torch.equal(order, plain_order) else utilization_curve(game, importance, order)
    return InteractionUtilization(curve, order, pairs, values, cut, spent + 2 * (n + 1))
