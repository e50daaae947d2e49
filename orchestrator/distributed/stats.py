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

from orchestrator.distributed.pool import WorkerPool, cpu_model, pool_for, resolve_workers
from orchestrator.distributed.scheduler import RunReport, ShardRunner
from pruning.errors import InputError
from pruning.statistics import (
    EDGE_BATCHES, EDGE_QUANTILE, RANK_IMAGES, ActivationStats, accumulate_stats, batch_labels, check_rank_images,
    compute_histogram_edges,
)
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
                                      image_offset=image_offset, **self.options)


def distributed_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    pool: WorkerPool | None = None,
    bins: int = 32,
    value: str = "gap",
    rank: bool = True,
    rank_images: int | None = RANK_IMAGES,
    chip: bool = False,
    map_entropy: bool = False,
    read_inputs: bool = False,
    per_class: bool = False,
    edge_batches: int = EDGE_BATCHES,
    edge_scope: str = "layer",
    edge_quantile: float = EDGE_QUANTILE,
    shard_size: int | None = None,
    progress: bool = True,
    max_failures: int | None = None,
    return_report: bool = False,
) -> ActivationStats | tuple[ActivationStats, RunReport]:
    """:func:`pruning.statistics.collect_activation_stats` on ``workers`` Ray actors.

    Edges from the first ``edge_batches`` batches on the driver (``edge_scope``, ``edge_quantile``:
    as in-process); ``rank_images``: map ranks over the first images of the pass only, as in-process;
    then shards of ``shard_size``
    batches (default: about four shards per worker) run on the actors and merge on the driver as
    they arrive. Equal to the in-process result: counts exactly, float sums up to order.
    With ``return_report``, returns ``(stats, RunReport)``; shard ids are batch-shard indices,
    ``nodes`` counts the shards each Ray node's actors ran.
    ``pool``: run on the first ``workers`` (default: all) actors of a :class:`WorkerPool`
    (``cpus_per_worker`` is then the pool's) instead of actors started for this call.
    ``gpus_per_worker``: the GPU share each new actor reserves (its replica then runs there).
    """
    wall = time.perf_counter()
    workers, cpus_per_worker = resolve_workers(workers, cpus_per_worker, pool)
    if edge_batches < 1:
        raise InputError(f"edge_batches must be at least 1, got {edge_batches}")
    check_rank_images(rank_images)
    batches = list(batches)
    inputs = [batch_inputs(b).detach().cpu() for b in batches]
    if not inputs:
        raise InputError("no calibration batches to collect statistics from")
    # per-class sums need each batch's labels on the actors (checked here, before any shard runs)
    shipped = [(x, batch_labels(b)) for x, b in zip(inputs, batches)] if per_class else inputs
    groups = list(groups)
    edges = compute_histogram_edges(model, groups, inputs[:edge_batches], bins=bins, value=value,
                                    edge_scope=edge_scope, edge_quantile=edge_quantile, read_inputs=read_inputs)
    if shard_size is None:
        shard_size = max(1, math.ceil(len(inputs) / (4 * workers)))
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    starts = range(0, len(inputs), shard_size)
    # image offset of each shard: the images of the batches before it
    offsets = [0]
    for x in inputs:
        offsets.append(offsets[-1] + len(x))
    shards = [(i, (list(range(s, min(s + shard_size, len(inputs)))), offsets[s])) for i, s in enumerate(starts)]
    report = RunReport("stats", workers, float(cpus_per_worker), shards=len(shards))

    put = time.perf_counter()
    model_ref = ray.put(cpu_model(model))
    inputs_ref = ray.put(shipped)
    edges_ref = ray.put(edges)
    report.put_s = time.perf_counter() - put
    options = {"value": value, "rank": rank, "rank_images": rank_images, "chip": chip, "map_entropy": map_entropy,
               "read_inputs": read_inputs, "per_class": per_class}
    task = (_StatsTask, model_ref, groups, inputs_ref, edges_ref, options)

    merged: list[ActivationStats] = []

    def accept(key, value: tuple[str, ActivationStats]) -> None:
        node, state = value
        report.nodes[node] = report.nodes.get(node, 0) + 1
        merged[:] = [state if not merged else merged[0].merge(state)]

    with pool_for(pool, workers, cpus_per_worker, gpus_per_worker) as active:
        runner = ShardRunner(active, workers, task, report, max_failures=max_failures, progress=progress,
                             desc="activation stats")
        runner.run(shards, accept)
    report.wall_s = time.perf_counter() - wall
    result = merged[0]
    return (result, report) if return_report else result
