"""Shapley channel importance within a layer (information concentration + Shapley values)."""
from __future__ import annotations

import time
from typing import ClassVar, Iterator

import torch

from pruning.criteria._base import Criterion, register_criterion
from pruning.games.shapley import (
    EXACT_MAX_SIZE,
    MODES,
    VALUES,
    LayerGame,
    ShapleyEstimate,
    calibration_batch,
    exact_shapley,
    group_seed,
    permutation_shapley,
    trace_model,
)


@register_criterion("shapley")
class ShapleyChannels(Criterion):
    """Shapley value of each channel in the coalition game of its layer,

        phi_i = sum_{S subset N\\{i}} |S|! (n-|S|-1)! / n! * (v(S + i) - v(S)),

    where N are the group's n channels and v(S) is the mean log-probability of the true class on
    a fixed calibration batch of ``batch_size`` images with the channels outside S zeroed at every
    observed output of the group (``pruning.games.shapley.LayerGame``; ``value`` may also be
    ``"accuracy"`` or ``"margin"``).

    Chen & Wang, "An Effective Information Theoretic Framework for Channel Pruning",
    arXiv:2408.16772 (Shapley values select the channels; their information concentration sets
    the layer ratios and is a separate criterion/ratio source).

    Estimation (defaults chosen to stay cheap): Monte Carlo permutation sampling with
    ``max_permutations`` permutations in antithetic pairs, TMC truncation once
    |v(prefix) - v(N)| < ``truncation`` * |v(N) - v(empty)| (None: off), optional early stop when
    every standard error is below ``epsilon``. Exact enumeration only for groups with at most
    ``exact_below`` channels (0 = never; capped at 10). Each group uses its own seed derived from
    ``seed`` and the group name. ``mode`` picks the evaluation path (``auto``: fx downstream-only
    re-execution, falling back to full forwards with hooks); ``max_batch`` bounds the images per
    forward. Per-group cost and mode of the last ``score`` call are in ``last_report``.
    """

    needs_calibration: ClassVar[bool] = True

    def __init__(
        self,
        seed: int = 0,
        max_permutations: int = 8,
        epsilon: float | None = None,
        value: str = "logprob",
        batch_size: int = 32,
        antithetic: bool = True,
        truncation: float | None = 0.02,
        batch_permutations: int = 8,
        exact_below: int = 0,
        mode: str = "auto",
        max_batch: int | None = None,
    ) -> None:
        super().__init__(seed)
        if value not in VALUES:
            raise ValueError(f"unknown value {value!r}; valid: {', '.join(VALUES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if max_permutations < 1 or batch_size < 1 or batch_permutations < 1 or (max_batch is not None and max_batch < 1):
            raise ValueError("max_permutations, batch_size, batch_permutations and max_batch must be >= 1")
        if truncation is not None and truncation < 0:
            raise ValueError("truncation must be >= 0 or None")
        self.max_permutations = max_permutations
        self.epsilon = epsilon
        self.value = value
        self.batch_size = batch_size
        self.antithetic = antithetic
        self.truncation = truncation
        self.batch_permutations = batch_permutations
        self.exact_below = min(int(exact_below), EXACT_MAX_SIZE)
        self.mode = mode
        self.max_batch = max_batch
        self.last_report: dict[str, dict] = {}

    def games(self, model, groups, context) -> Iterator[LayerGame]:
        """One :class:`LayerGame` per group on the calibration batch, built lazily (each caches
        activations of the batch) and sharing one fx trace."""
        self.check_context(context)
        inputs, targets = calibration_batch(context.calibration, self.batch_size)
        mode, traced = self.mode, None
        if mode != "hooks" and groups:
            traced = trace_model(model)
            if traced is None and mode == "auto":
                mode = "hooks"
        for group in groups:
            yield LayerGame(
                model, group, inputs, targets, value=self.value, mode=mode, max_batch=self.max_batch, traced=traced
            )

    def estimate(self, game: LayerGame, name: str) -> ShapleyEstimate:
        if game.size <= self.exact_below:
            return exact_shapley(game)
        tol = None
        if self.truncation is not None:
            v_full, v_empty = game.endpoints()
            tol = self.truncation * abs(v_full - v_empty)
        return permutation_shapley(
            game,
            max_permutations=self.max_permutations,
            epsilon=self.epsilon,
            antithetic=self.antithetic,
            truncation_tol=tol,
            batch_permutations=self.batch_permutations,
            seed=group_seed(self.seed, name),
        )

    def estimates(self, model, groups, context) -> Iterator[tuple[str, LayerGame, ShapleyEstimate]]:
        """Yield ``(group name, game, estimate)`` group by group; fills ``last_report``."""
        self.last_report = {}
        for game in self.games(model, groups, context):
            name = game.group.name
            start = time.perf_counter()
            est = self.estimate(game, name)
            self.last_report[name] = {
                "mode": game.mode,
                "fallback_reason": game.fallback_reason,
                "permutations": est.permutations,
                "coalitions": game.coalitions,
                "image_evaluations": game.evaluations,
                "max_stderr": float(est.stderr.max()) if len(est.stderr) else 0.0,
                "estimate_seconds": time.perf_counter() - start,  # game construction excluded
            }
            yield name, game, est

    def score(self, model, groups, context):
        return {
            name: torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
            for name, _, est in self.estimates(model, groups, context)
        }
