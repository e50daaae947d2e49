"""How the ``shapley`` / ``snpfi`` criteria estimate a layer game, in one place.

:class:`ShapleyOptions` holds every estimation option; :func:`estimate_shapley` applies them to
one game, in this process. The distributed estimator (``orchestrator.distributed``) takes the
same options object and cuts the same budget into blocks (:mod:`pruning.games.blocks`), so no
option is ever copied between the two by name. :func:`calibration_batch` picks the images the
worth is computed on and :func:`group_seed` the random stream of a group.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pruning.errors import InputError
from pruning.games.coalitions import VALUES, CoalitionGame, game_endpoints
from pruning.games.estimators import EXACT_MAX_SIZE, ShapleyEstimate, exact_shapley, permutation_shapley
from pruning.games.layer import MODES


@dataclass(frozen=True)
class ShapleyOptions:
    """Estimation options of a layer game (defaults chosen to stay cheap).

    ``max_permutations`` permutations (in antithetic pairs with ``antithetic``), evaluated
    ``batch_permutations`` at a time (the block size when distributed); TMC truncation once
    |v(prefix) - v(N)| < ``truncation`` * |v(N) - v(empty)| (None: off), prefixes then evaluated
    in windows of ``truncation_window`` lengths; an early stop once every standard error is below
    ``epsilon`` (None: off). Groups with at most ``exact_below`` channels (capped at 10) are
    enumerated exactly. The worth is ``value`` on the first ``batch_size`` calibration images;
    ``mode`` picks the evaluation path of :class:`~pruning.games.layer.LayerGame` and
    ``max_batch`` bounds the images per forward.
    """

    max_permutations: int = 8
    epsilon: float | None = None
    value: str = "logprob"
    batch_size: int = 32
    antithetic: bool = True
    truncation: float | None = 0.02
    batch_permutations: int = 8
    truncation_window: int | None = None
    exact_below: int = 0
    mode: str = "auto"
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.value not in VALUES:
            raise InputError(f"unknown value {self.value!r}; valid: {', '.join(VALUES)}")
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
        # frozen: the cap is applied once, here, so every reader sees the effective value
        object.__setattr__(self, "exact_below", min(int(self.exact_below), EXACT_MAX_SIZE))

    def truncation_tol(self, game: CoalitionGame) -> float | None:
        """The absolute TMC tolerance for ``game``: ``truncation`` x |v(N) - v(empty)|."""
        if self.truncation is None:
            return None
        v_full, v_empty = game_endpoints(game)
        return self.truncation * abs(v_full - v_empty)


def estimate_shapley(game: CoalitionGame, options: ShapleyOptions, seed: int) -> ShapleyEstimate:
    """Shapley values of ``game`` as ``options`` say: exact enumeration for at most
    ``exact_below`` players, else permutation sampling seeded with ``seed``."""
    if game.size <= options.exact_below:
        return exact_shapley(game)
    return permutation_shapley(
        game,
        max_permutations=options.max_permutations,
        epsilon=options.epsilon,
        antithetic=options.antithetic,
        truncation_tol=options.truncation_tol(game),
        batch_permutations=options.batch_permutations,
        truncation_window=options.truncation_window,
        seed=seed,
    )


def calibration_batch(calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch_size`` calibration images (concatenated across batches) and targets."""
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


def group_seed(seed: int, name: str) -> int:
    """A per-group seed from the criterion seed and the group's name: independent streams per
    group, and a group's estimate does not depend on which other groups are scored."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])
