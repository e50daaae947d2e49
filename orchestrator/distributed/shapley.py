"""Shapley estimates in blocks on Ray actors: :func:`distributed_shapley`, and
:class:`DistributedShapley`, the estimator that lets a ``shapley``/``snpfi`` criterion use it.

Per group, the permutation budget is cut into blocks of ``options.batch_permutations``
permutations (:func:`pruning.games.shapley_blocks`): what a block computes depends on its index
only, not on which actor runs it. The blocks' Welford states merge on the driver strictly in
block order (:class:`pruning.games.BlockMerge`), with the early stop (``epsilon`` or
``boundary``) checked after each in-order merge, so the result is bit-identical across runs and
across worker counts for the same block plan. Blocks that were handed out before their group
converged and come back afterwards are discarded; once a group has converged or spent its
budget, none of its blocks are handed out any more. The model must be importable on the
workers (its class is pickled by reference): models from :mod:`pruning.models` are, on any
node where this project is installed.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import ray
import torch
from torch import nn

from orchestrator.distributed.connection import connect
from orchestrator.distributed.options import ShardOptions
from orchestrator.distributed.pool import cpu_model, pool_for, resolve_workers
from orchestrator.distributed.scheduler import RunReport, ShardRunner
from pruning.errors import InputError
from pruning.games import (
    GameSharing,
    LayerGame,
    ShapleyEstimate,
    ShapleyOptions,
    block_merge,
    estimate_block,
    exact_shapley,
    resolve_trace,
    shapley_blocks,
)
from pruning.structure import ChannelGroup
from pruning.tasks import Classification, Task


class _ShapleyTask:
    """One actor's replica: the layer games of the groups on the calibration batch, each built on
    its group's first block and sharing one fx trace."""

    def __init__(self, model, groups, inputs, targets, options: ShapleyOptions, game_task) -> None:
        self.model = model
        self.groups = {g.name: g for g in groups}
        self.inputs, self.targets = inputs, targets
        self.options = options
        self.game_task = game_task
        self.games: dict[str, LayerGame] = {}
        self.mode, self.traced = resolve_trace(model, options.mode)

    def __call__(self, key: tuple[str, int], block: tuple[int, np.random.SeedSequence]) -> ShapleyEstimate:
        name, _ = key
        game = self.games.get(name)
        if game is None:
            game = self.games[name] = LayerGame(
                self.model, self.groups[name], self.inputs, self.targets, self.options.game_settings(self.game_task, self.mode),
                GameSharing(traced=self.traced),
            )
        permutations, seed = block
        return estimate_block(game, self.options, permutations, seed)


# long signature: the estimator hook's arguments (pruning.criteria.shapley.ShapleyEstimator) plus the
# shard options; the task and seed are keywords every caller names
def distributed_shapley(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]],
    options: ShapleyOptions = ShapleyOptions(),
    shards: ShardOptions = ShardOptions(),
    *,
    seed: int = 0,
    task: Task | None = None,
) -> dict[str, ShapleyEstimate] | tuple[dict[str, ShapleyEstimate], RunReport]:
    """Shapley values of every group's channels as ``options`` say, in blocks on Ray actors.

    The worth is ``task``'s (None: classification), computed on ``options.game_batch(calibration, seed)``; each block
    holds ``options.batch_permutations`` permutations. Groups with at most
    ``options.exact_below`` channels are enumerated exactly on the driver. Shard ids in the
    report are ``(group name, block index)``. ``shards``: the actors and what the call returns
    (:class:`~orchestrator.distributed.ShardOptions`; its ``shard_size`` does not apply).

    Identical results for the same seed and block plan (``max_permutations``,
    ``batch_permutations``, ``antithetic``), whatever the number of workers, the arrival order
    or actor failures.
    """
    wall = time.perf_counter()
    workers, cpus_per_worker = resolve_workers(shards.workers, shards.cpus_per_worker, shards.pool)
    groups = list(groups)
    report = RunReport("shapley", workers, float(cpus_per_worker))
    if not groups:
        return ({}, report) if shards.return_report else {}
    inputs, targets = options.game_batch(calibration, seed)
    task = task or Classification()

    results: dict[str, ShapleyEstimate] = {}
    blocks: dict[str, list] = {}
    for g in groups:
        if g.size <= options.exact_below:
            game = LayerGame(model, g, inputs, targets, options.game_settings(task))
            results[g.name] = exact_shapley(game)
        else:
            blocks[g.name] = shapley_blocks(options, seed, g.name)
    merges = {name: block_merge(options, len(plan)) for name, plan in blocks.items()}
    # round-robin over groups by block index: every group advances, an early stop bites early
    plan = [((name, k), block) for k, step in enumerate(zip(*blocks.values())) for name, block in zip(blocks, step)]
    report.shards = len(plan)

    if merges:
        put = time.perf_counter()
        model_ref = ray.put(cpu_model(model))
        inputs_ref, targets_ref = ray.put(inputs.detach().cpu()), ray.put(targets.detach().cpu())
        report.put_s = time.perf_counter() - put
        estimated = [g for g in groups if g.name in merges]
        replica = (_ShapleyTask, model_ref, estimated, inputs_ref, targets_ref, options, task)
        with pool_for(shards.pool, workers, cpus_per_worker, shards.gpus_per_worker) as active:
            runner = ShardRunner(active, replica, report, max_failures=shards.max_failures, progress=shards.progress,
                                 desc="shapley blocks")
            runner.run(
                plan,
                accept=lambda key, est: merges[key[0]].add(key[1], est),
                wanted=lambda key: not merges[key[0]].done,
                finished=lambda: all(m.done for m in merges.values()),
            )
    for name, m in merges.items():
        results[name] = m.estimate()
        report.groups[name] = {"blocks": m.blocks, "merged": m.merged, "converged": m.converged,
                               "permutations": m.permutations}
    report.wall_s = time.perf_counter() - wall
    ordered = {g.name: results[g.name] for g in groups}
    return (ordered, report) if shards.return_report else ordered


class DistributedShapley:
    """The estimation hook of the ``shapley``/``snpfi`` criteria on Ray actors.

    ``criterion.delegate_estimation(DistributedShapley(ShardOptions(workers=8)))`` is a drop-in for
    the in-process criterion (in :func:`pruning.pipeline.prune_with_criterion`, for SNPFI's
    automatic ratios, ...): its :func:`distributed_shapley` call gets the criterion's own options
    and seed (``batch_permutations`` is the block size) and runs as ``shards`` say (its
    ``return_report`` is ignored). Connects to Ray (:func:`connect` with ``address``) on first use
    unless ``shards`` names a pool; ``last_report`` holds the :class:`RunReport` of the last
    estimation.
    """

    def __init__(self, shards: ShardOptions, *, address: str | None = None, log_to_driver: bool = True) -> None:
        if shards.workers is None and shards.pool is None:
            raise InputError("give workers (>= 1) or a WorkerPool")
        self.shards = shards.replace(return_report=True)
        self.address = address
        self.log_to_driver = log_to_driver
        self.last_report: RunReport | None = None

    def __call__(self, model, groups, calibration, options: ShapleyOptions, seed: int,
                 task: Task) -> dict[str, ShapleyEstimate]:
        if self.shards.pool is None:
            connect(self.address, self.shards.workers, self.shards.cpus_per_worker, log_to_driver=self.log_to_driver)
        result, self.last_report = distributed_shapley(model, groups, calibration, options, self.shards, seed=seed,
                                                       task=task)
        return result
