"""Activation statistics in parallel shards on Ray actors (:func:`distributed_stats`).

The driver computes the histogram edges (a short first pass on the first batches, in-process, as
:func:`pruning.statistics.collect_activation_stats` does), puts the model, the batches' inputs
(with their labels for ``per_class``) and the edges into the object store ONCE, and the actors each build one model replica from those
objects. Shards (contiguous ranges of batch indices, each with its offset in images so that map
ranks cover the first ``rank_images`` images of the whole pass) go to the actors; the partial
:class:`~pruning.statistics.ActivationStats` merge on the driver as they arrive. Counts and
histograms equal the single-process pass exactly, float sums up to summation order.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

import ray
from torch import nn

from orchestrator.distributed.options import ShardOptions
from orchestrator.distributed.pool import cpu_model, pool_for, resolve_workers
from orchestrator.distributed.scheduler import RunReport, ShardRunner
from pruning.errors import InputError
from pruning.statistics import ActivationStats, StatsOptions, accumulate_stats, batch_labels, compute_histogram_edges
from pruning.structure import ChannelGroup
from pruning.utils import batch_inputs


class _StatsTask:
    """One actor's replica: statistics of the batches a shard names."""

    def __init__(self, model, groups, inputs, edges, options) -> None:
        self.model, self.groups, self.inputs, self.edges, self.options = model, groups, inputs, edges, options

    def __call__(self, key: int, shard: tuple[Sequence[int], int]) -> tuple[str, ActivationStats]:
        indices, image_offset = shard
        # the node id travels with the result: the report says which machines ran shards
        node = ray.get_runtime_context().get_node_id()
        return node, accumulate_stats(self.model, self.groups, [self.inputs[i] for i in indices], self.edges,
                                      self.options, image_offset=image_offset)


def distributed_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    options: StatsOptions = StatsOptions(),
    shards: ShardOptions = ShardOptions(),
) -> ActivationStats | tuple[ActivationStats, RunReport]:
    """:func:`pruning.statistics.collect_activation_stats` (as ``options`` say) on Ray actors
    (as ``shards`` say).

    Edges from the first ``options.edge_batches`` batches on the driver (``edge_scope``,
    ``edge_quantile``: as in-process); ``rank_images``: map ranks over the first images of the
    pass only, as in-process; then shards of ``shards.shard_size`` batches (default: about four
    shards per worker) run on the actors and merge on the driver as they arrive. Equal to the
    in-process result: counts exactly, float sums up to order. With ``shards.return_report``,
    returns ``(stats, RunReport)``; shard ids are batch-shard indices, ``nodes`` counts the shards
    each Ray node's actors ran.
    """
    wall = time.perf_counter()
    workers, cpus_per_worker = resolve_workers(shards.workers, shards.cpus_per_worker, shards.pool)
    batches = list(batches)
    inputs = [batch_inputs(b).detach().cpu() for b in batches]
    if not inputs:
        raise InputError("no calibration batches to collect statistics from")
    # per-class sums need each batch's labels on the actors (checked here, before any shard runs)
    shipped = [(x, batch_labels(b)) for x, b in zip(inputs, batches)] if options.per_class else inputs
    groups = list(groups)
    edges = compute_histogram_edges(model, groups, inputs[:options.edge_batches], options)
    shard_size = shards.shard_size or max(1, math.ceil(len(inputs) / (4 * workers)))
    starts = range(0, len(inputs), shard_size)
    # image offset of each shard: the images of the batches before it
    offsets = [0]
    for x in inputs:
        offsets.append(offsets[-1] + len(x))
    plan = [(i, (list(range(s, min(s + shard_size, len(inputs)))), offsets[s])) for i, s in enumerate(starts)]
    report = RunReport("stats", workers, float(cpus_per_worker), shards=len(plan))

    put = time.perf_counter()
    model_ref = ray.put(cpu_model(model))
    inputs_ref = ray.put(shipped)
    edges_ref = ray.put(edges)
    report.put_s = time.perf_counter() - put
    task = (_StatsTask, model_ref, groups, inputs_ref, edges_ref, options)

    merged: list[ActivationStats] = []

    def accept(key, value: tuple[str, ActivationStats]) -> None:
        node, state = value
        report.nodes[node] = report.nodes.get(node, 0) + 1
        merged[:] = [state if not merged else merged[0].merge(state)]

    with pool_for(shards.pool, workers, cpus_per_worker, shards.gpus_per_worker) as active:
        runner = ShardRunner(active, task, report, max_failures=shards.max_failures, progress=shards.progress,
                             desc="activation stats")
        runner.run(plan, accept)
    report.wall_s = time.perf_counter() - wall
    result = merged[0]
    return (result, report) if shards.return_report else result
