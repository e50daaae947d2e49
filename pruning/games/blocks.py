"""A group's permutation budget cut into blocks that can run anywhere, merged back in order.

The block plan depends only on the options and the group: block ``k`` of group ``g`` has
:func:`shapley_block_plan` ``[k]`` permutations and draws them from
``SeedSequence(group_seed(seed, g)).spawn(blocks)[k]`` (:func:`shapley_blocks`), so what a block
computes (:func:`estimate_block`) does not depend on who computes it or when. :class:`BlockMerge`
combines the blocks' Welford states with Chan's formula strictly in block order (blocks that
arrive early wait) and checks the early stop (``epsilon`` or the boundary) after every in-order
merge, so the result is bit-identical whatever the arrival order. ``orchestrator.distributed``
runs the blocks on Ray actors; nothing here knows about Ray.
"""
from __future__ import annotations

import numpy as np

from pruning.games.coalitions import CoalitionGame
from pruning.games.estimation import ShapleyOptions, group_seed
from pruning.games.estimators import (
    BoundaryStop,
    PermutationSampling,
    RunningStats,
    ShapleyEstimate,
    permutation_shapley,
    stop_reached,
)


def shapley_block_plan(max_permutations: int, block: int, antithetic: bool) -> list[int]:
    """Permutations per block for one group: ``max_permutations`` (rounded down to an even
    number, at least 2, with ``antithetic``) cut into blocks of ``block`` (rounded the same way);
    the last block may be smaller."""
    if max_permutations < 1 or block < 1:
        raise ValueError("max_permutations and block must be >= 1")
    step = 2 if antithetic else 1
    budget = max(step, max_permutations - max_permutations % step)
    size = max(step, block - block % step)
    return [min(size, budget - start) for start in range(0, budget, size)]


def shapley_blocks(options: ShapleyOptions, seed: int, name: str) -> list[tuple[int, np.random.SeedSequence]]:
    """``(permutations, seed sequence)`` of every block of group ``name`` (blocks of
    ``options.batch_permutations``)."""
    plan = shapley_block_plan(options.max_permutations, options.batch_permutations, options.antithetic)
    return list(zip(plan, np.random.SeedSequence(group_seed(seed, name)).spawn(len(plan))))


def block_merge(options: ShapleyOptions, blocks: int) -> BlockMerge:
    """The :class:`BlockMerge` of a group of ``blocks`` blocks with the stop ``options`` set."""
    return BlockMerge(blocks, options.epsilon, options.boundary_stop())


def estimate_block(game: CoalitionGame, options: ShapleyOptions, permutations: int,
                   seed: np.random.SeedSequence) -> ShapleyEstimate:
    """One block: ``permutations`` permutations in one batch, without an early stop
    (:class:`BlockMerge` decides that on the merged blocks)."""
    sampling = PermutationSampling(
        max_permutations=permutations,
        epsilon=None,
        antithetic=options.antithetic,
        truncation_tol=options.truncation_tol(game),
        batch_permutations=permutations,
        truncation_window=options.truncation_window,
    )
    return permutation_shapley(game, sampling, seed)


class BlockMerge:
    """In-block-order Chan merge of one group's ``blocks`` blocks, with the early stop of
    :func:`~pruning.games.estimators.stop_reached` (``epsilon`` and/or ``boundary``).

    ``merged`` blocks are in the estimate; ``done`` once the group converged (the stop reached)
    or every block is merged; blocks added after that are ignored.
    """

    def __init__(self, blocks: int, epsilon: float | None, boundary: BoundaryStop | None = None) -> None:
        self.blocks = blocks
        self.epsilon = epsilon
        self.boundary = boundary
        self.merged = 0
        self.permutations = 0
        self.evaluations = 2  # v(N) and v(empty), which every block computes once more
        self.converged = False
        self._waiting: dict[int, ShapleyEstimate] = {}
        self._stats: RunningStats | None = None
        self._endpoints: tuple[float, float] | None = None

    @property
    def done(self) -> bool:
        return self.converged or self.merged >= self.blocks

    def add(self, index: int, block: ShapleyEstimate) -> None:
        """Take block ``index``; merge it and every waiting successor once its predecessors are in."""
        self._waiting[index] = block
        while not self.done and self.merged in self._waiting:
            block = self._waiting.pop(self.merged)
            self._stats = block.stats if self._stats is None else self._stats.merge(block.stats)
            self.permutations += block.permutations
            self.evaluations += block.evaluations - 2
            self._endpoints = self._endpoints or (block.v_full, block.v_empty)
            self.merged += 1
            if stop_reached(self._stats, self.epsilon, self.boundary, self._endpoints[0] - self._endpoints[1]):
                self.converged = True
        if self.done:
            self._waiting.clear()

    def estimate(self) -> ShapleyEstimate:
        """The estimate of the merged blocks."""
        if self._stats is None:
            raise ValueError("no block merged yet")
        stats = self._stats
        return ShapleyEstimate(stats.mean.clone(), stats.stderr(), self.permutations, self.evaluations,
                               self._endpoints[0], self._endpoints[1], stats)
