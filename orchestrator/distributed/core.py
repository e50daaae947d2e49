"""Activation statistics and Shapley estimates in parallel shards on Ray actors.

``pruning`` stays plain PyTorch and provides the mergeable states this module moves around:

* :func:`distributed_stats`: the driver computes the histogram edges (a short first pass on the
  first batch, in-process, as :func:`pruning.statistics.collect_activation_stats` does), puts the model,
  the batches' inputs and the edges into the object store ONCE, and starts ``workers`` actors
  (or uses those of a :class:`WorkerPool`) that each build one model replica from those objects. Shards (lists of batch indices) go to the
  actors; the partial :class:`~pruning.statistics.ActivationStats` merge on the driver as they arrive.
  Counts and histograms equal the single-process pass exactly, float sums up to summation order.
* :func:`distributed_shapley`: per group, the permutation budget is cut into blocks of ``block``
  permutations (the *block plan*); block ``k`` of group ``g`` draws its permutations from
  ``SeedSequence(group_seed(seed, g)).spawn(...)[k]``, so what a block computes depends on its
  index only, not on which actor runs it. The per-channel Welford states (n, mean, M2) of the
  blocks merge with Chan's formula on the driver strictly in block order (results that arrive
  early wait in a buffer), and the ``epsilon`` stop is checked after each in-order merge, as the
  in-process estimator checks after each batch. The result is therefore bit-identical across runs
  and across worker counts for the same block plan; blocks that were handed out before a group
  converged and come back afterwards are discarded. Once a group has converged (max stderr below
  ``epsilon``) or spent its budget, none of its blocks are handed out any more.
* Fault tolerance: actors run with at-most-once task semantics (``max_task_retries=0``); when an
  actor dies (``RayActorError``), every shard it held is put back at the front of the queue and a
  fresh actor replaces it (at most ``max_failures`` times per run). Shard ids are accepted at
  most once, so no shard is counted twice; the run report lists them in acceptance order.

Every actor runs single-threaded torch by default (``torch.set_num_threads(int(cpus_per_worker))``)
and reserves ``cpus_per_worker`` CPUs, so ``workers x cpus_per_worker`` CPUs are needed.
The model must be importable on the workers (its class is pickled by reference): models from
:mod:`pruning.models` are, on any node where this project is installed.

:func:`connect` joins a cluster (``address="auto"`` on a cluster node, ``ray://host:10001``
through the Ray client) or starts a local Ray without dashboard; see ``docs/cluster.md`` for what
a local Ray opens.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import ray
import torch
from torch import nn

from orchestrator.distributed import network as private_network
from pruning.criteria._base import Criterion, ScoringContext
from pruning.structure import ChannelGroup
from pruning.games import (
    EXACT_MAX_SIZE,
    LayerGame,
    RunningStats,
    ShapleyEstimate,
    calibration_batch,
    exact_shapley,
    group_seed,
    permutation_shapley,
    trace_model,
)
from pruning.statistics import ActivationStats, accumulate_stats, compute_histogram_edges

__all__ = [
    "RayConnection",
    "RunReport",
    "FaultInjection",
    "connect",
    "available_cpus",
    "distributed_stats",
    "distributed_shapley",
    "shapley_block_plan",
    "WorkerPool",
    "DistributedShapley",
]

log = logging.getLogger(__name__)

#: shards in flight per actor: the next one is already queued while the current one runs
DEPTH = 2
#: seconds to wait for the actors to come up before giving up
START_TIMEOUT = 300.0

# the run in which connect() started Ray itself (None: Ray was started elsewhere or joined)
_local_started: bool = False


# ------------------------------------------------------------------------------------ connect
@dataclass(frozen=True)
class RayConnection:
    """How this process is attached to Ray: ``started`` says whether :func:`connect` started a
    local Ray (False: joined a cluster or reused a running one); ``cpus`` is the cluster's total."""

    address: str | None
    started: bool
    reused: bool
    cpus: float


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def connect(
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    *,
    log_to_driver: bool = True,
) -> RayConnection:
    """Attach to Ray.

    * Ray already initialised (a test session, a Tune trial's driver): reuse it as it is.
    * ``address=None``: start a local Ray with :func:`available_cpus` CPUs and no dashboard.
      Its core services (GCS, raylet, object manager, workers) bind all interfaces (Ray 2.60
      offers no loopback-only bind) and require the token that a local ``ray.init`` generates
      (token authentication, on by default for local clusters since Ray 2.59). Inside
      :mod:`orchestrator.distributed.network` (what the ``prunesweep`` command does by default)
      the only interface is loopback, so no port is reachable from another host.
    * ``address="auto"`` (on a node of a running cluster) or ``"ray://host:port"`` (Ray client):
      join that cluster.

    With ``workers`` given, checks that ``workers x cpus_per_worker`` CPUs exist: a local Ray
    raises ``ValueError`` (the actors would wait forever), a cluster only warns (an autoscaler
    may still add nodes).
    """
    global _local_started
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    reused = ray.is_initialized()
    started = False
    if not reused:
        if address is None:
            # Inside the private namespace there is no route for Ray's own IP detection to probe.
            node_ip = {"_node_ip_address": "127.0.0.1"} if private_network.active() else {}
            ray.init(num_cpus=available_cpus(), include_dashboard=False, log_to_driver=log_to_driver, **node_ip)
            started = _local_started = True
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if workers:
        _check_cpus(workers, cpus_per_worker, cpus, local=started or (reused and _local_started))
    return RayConnection(address=address, started=started, reused=reused, cpus=cpus)


def _check_cpus(workers: int, cpus_per_worker: float, cpus: float, *, local: bool) -> None:
    need = workers * cpus_per_worker
    if need <= cpus:
        return
    message = (
        f"{workers} workers x {cpus_per_worker:g} CPUs need {need:g} CPUs, the Ray cluster has {cpus:g}"
    )
    if local:
        raise ValueError(message + "; lower --workers/--cpus-per-worker or join a cluster with --address")
    warnings.warn(message + "; the actors wait until an autoscaler adds nodes", RuntimeWarning, stacklevel=3)


def _resolve_workers(workers: int | None, cpus_per_worker: float, pool: WorkerPool | None) -> tuple[int, float]:
    if pool is not None:
        if pool.closed:
            raise ValueError("the worker pool is closed")
        if workers is None:
            return pool.workers, pool.cpus_per_worker
        if not 1 <= workers <= pool.workers:
            raise ValueError(f"workers must be in 1..{pool.workers} (the pool's size), got {workers}")
        return int(workers), pool.cpus_per_worker
    if workers is None:
        raise ValueError("give workers (>= 1) or a WorkerPool")
    _ensure_ray(workers, cpus_per_worker)
    return int(workers), float(cpus_per_worker)


def _ensure_ray(workers: int, cpus_per_worker: float) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1 for a distributed run, got {workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    if not ray.is_initialized():
        connect(None, workers, cpus_per_worker)
    else:
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        _check_cpus(workers, cpus_per_worker, cpus, local=_local_started or len(ray.nodes()) == 1)


# ------------------------------------------------------------------------------- run report
@dataclass(frozen=True)
class FaultInjection:
    """Test hook: the first time a shard in ``kill`` is handed out, the actor is told to sleep
    ``slow_s`` before working on it and the driver ``ray.kill`` s that actor ``after_s`` seconds
    later, i.e. while it works on the shard."""

    kill: frozenset = frozenset()
    after_s: float = 0.3
    slow_s: float = 5.0


@dataclass
class RunReport:
    """What a distributed run did.

    ``accepted``: shard ids whose results were taken, in arrival order (each at most once);
    ``dispatched``: shard hand-outs including redos; ``failures``: actors lost mid-run (each
    replaced by a fresh one); ``discarded``: results that came back after their group had
    converged; ``started_workers``: actors started for this run (0 with a warm
    :class:`WorkerPool`); ``put_s``: object-store puts; ``start_s``: from asking for the actors
    until every one has started and loaded its model replica; ``wall_s``: the whole call. ``groups`` (Shapley only): per group ``{blocks, merged,
    converged, permutations}``.
    """

    kind: str
    workers: int
    cpus_per_worker: float
    shards: int = 0
    accepted: list = field(default_factory=list)
    dispatched: int = 0
    failures: int = 0
    discarded: int = 0
    duplicates: int = 0
    started_workers: int = 0
    put_s: float = 0.0
    start_s: float = 0.0
    wall_s: float = 0.0
    groups: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["accepted"] = [list(k) if isinstance(k, tuple) else k for k in self.accepted]
        return out


# ------------------------------------------------------------------------------------ actors
class _StatsTask:
    def __init__(self, model, groups, inputs, edges, options) -> None:
        self.model, self.groups, self.inputs, self.edges, self.options = model, groups, inputs, edges, options

    def __call__(self, key: int, indices: Sequence[int]) -> ActivationStats:
        return accumulate_stats(self.model, self.groups, [self.inputs[i] for i in indices], self.edges, **self.options)


class _ShapleyTask:
    def __init__(self, model, groups, inputs, targets, options) -> None:
        self.model = model
        self.groups = {g.name: g for g in groups}
        self.inputs, self.targets = inputs, targets
        self.options = dict(options)
        self.games: dict[str, LayerGame] = {}
        self.traced = None
        self.mode = self.options["mode"]
        if self.mode != "hooks":
            self.traced = trace_model(model)
            if self.traced is None and self.mode == "auto":
                self.mode = "hooks"

    def _game(self, name: str) -> LayerGame:
        game = self.games.get(name)
        if game is None:
            game = self.games[name] = LayerGame(
                self.model, self.groups[name], self.inputs, self.targets, value=self.options["value"],
                mode=self.mode, max_batch=self.options["max_batch"], traced=self.traced,
            )
        return game

    def __call__(self, key: tuple[str, int], spec: tuple[int, np.random.SeedSequence]) -> ShapleyEstimate:
        name, _ = key
        count, seed = spec
        game = self._game(name)
        tol = None
        if self.options["truncation"] is not None:
            v_full, v_empty = game.endpoints()
            tol = self.options["truncation"] * abs(v_full - v_empty)
        return permutation_shapley(
            game, max_permutations=count, epsilon=None, antithetic=self.options["antithetic"], truncation_tol=tol,
            batch_permutations=count, truncation_window=self.options["truncation_window"], seed=seed,
        )


_TASKS = {"stats": _StatsTask, "shapley": _ShapleyTask}


class _Worker:
    """The actor: single-threaded torch (``threads``), one task (model replica + data) at a time.

    ``load`` builds the task from object-store values (Ray resolves the refs passed to it) once
    per run; ``run`` works on one shard of it.
    """

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.task = None
        self.shards = 0

    def load(self, kind: str, *args) -> int:
        self.task = None  # free the previous replica first
        self.task = _TASKS[kind](*args)
        return os.getpid()

    def run(self, key, payload, delay: float = 0.0):
        if delay:  # test hook (FaultInjection): a slow shard
            time.sleep(delay)
        self.shards += 1
        return self.task(key, payload)


class WorkerPool:
    """Ray actors that outlive one call, so that several distributed runs in one driver (a test
    module, a sweep driver) pay the worker start (a Python process importing torch) once.

    Each actor reserves ``cpus_per_worker`` CPUs for as long as the pool lives: close it (or use
    it as a context manager) before other Ray work needs those CPUs. Without a pool, every
    distributed call starts and ends its own actors.
    """

    def __init__(self, workers: int, cpus_per_worker: float = 1) -> None:
        _ensure_ray(workers, cpus_per_worker)
        self.workers = int(workers)
        self.cpus_per_worker = float(cpus_per_worker)
        self.actors: list[Any] = []
        self.started = 0
        self.closed = False
        self._cls = ray.remote(_Worker).options(num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0)

    def _start(self):
        self.started += 1
        return self._cls.remote(self.cpus_per_worker)

    def acquire(self) -> list[Any]:
        """The pool's actors, starting any that are missing."""
        if self.closed:
            raise ValueError("the worker pool is closed")
        while len(self.actors) < self.workers:
            self.actors.append(self._start())
        return list(self.actors)

    def replace(self, slot: int) -> Any:
        """Kill the actor in ``slot`` (if still alive) and start a fresh one there."""
        _kill(self.actors[slot])
        self.actors[slot] = self._start()
        return self.actors[slot]

    def close(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors = []
        self.closed = True

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


# --------------------------------------------------------------------------------- scheduler
class _ShardRunner:
    """Hands shards to the pool's actors, replaces dead actors and redoes their shards.

    Every actor (and every replacement) first gets ``load(*load_args)``; then ``run(key,
    payload, delay)`` per shard. ``accept(key, value)`` takes one result (called at most once per
    key); ``wanted(key)`` says whether a shard still needs doing (False drops it from the queue
    and discards its late result); ``finished()`` ends the run early.
    """

    def __init__(
        self,
        pool: WorkerPool,
        workers: int,
        load_args: tuple,
        report: RunReport,
        *,
        max_failures: int | None = None,
        fault: FaultInjection | None = None,
        progress: bool = False,
        desc: str = "shards",
    ) -> None:
        self.pool = pool
        self.workers = workers
        self.load_args = load_args
        self.report = report
        self.max_failures = 2 * workers + 2 if max_failures is None else max_failures
        self.fault = fault
        self.progress = progress
        self.desc = desc

    def run(
        self,
        shards: Sequence[tuple[Hashable, Any]],
        accept: Callable[[Hashable, Any], None],
        wanted: Callable[[Hashable], bool] = lambda key: True,
        finished: Callable[[], bool] = lambda: False,
    ) -> None:
        report, pool = self.report, self.pool
        payload = dict(shards)
        order = {key: i for i, (key, _) in enumerate(shards)}
        pending = collections.deque(key for key, _ in shards)
        attempts: collections.Counter = collections.Counter()
        done: set = set()
        inflight: dict[Any, tuple[int, Hashable]] = {}  # ref -> (slot, key)
        kills: list[tuple[float, int, Any]] = []  # (deadline, slot, actor)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(shards), desc=self.desc, unit="shard")
        started = time.perf_counter()
        before = pool.started
        actors = pool.acquire()[: self.workers]
        report.started_workers = pool.started - before
        try:
            try:
                ray.get([a.load.remote(*self.load_args) for a in actors], timeout=START_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"{self.workers} Ray workers did not start within {START_TIMEOUT:.0f} s; does the cluster have "
                    f"{self.workers} x {pool.cpus_per_worker:g} free CPUs?"
                ) from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                # a pooled actor died between runs: start fresh ones
                for slot in range(len(actors)):
                    actors[slot] = pool.replace(slot)
                ray.get([a.load.remote(*self.load_args) for a in actors], timeout=START_TIMEOUT)
            report.start_s = time.perf_counter() - started
            while not finished():
                # hand out work: every actor gets up to DEPTH shards
                for slot, actor in enumerate(actors):
                    busy = sum(1 for s, _ in inflight.values() if s == slot)
                    while busy < DEPTH and pending:
                        key = pending.popleft()
                        if key in done or not wanted(key):
                            continue
                        delay = 0.0
                        if self.fault is not None and key in self.fault.kill and attempts[key] == 0:
                            delay = self.fault.slow_s
                            kills.append((time.monotonic() + self.fault.after_s, slot, actor))
                        attempts[key] += 1
                        inflight[actor.run.remote(key, payload[key], delay)] = (slot, key)
                        report.dispatched += 1
                        busy += 1
                if not inflight:
                    break
                timeout = None
                if kills:
                    timeout = max(0.0, min(k[0] for k in kills) - time.monotonic())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout)
                now = time.monotonic()
                for kill in [k for k in kills if k[0] <= now]:
                    kills.remove(kill)
                    ray.kill(kill[2], no_restart=True)
                for ref in ready:
                    if ref not in inflight:
                        continue  # dropped with its dead actor
                    slot, key = inflight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                        self._lost(slot, key, err, inflight, pending, order)
                        actors[slot] = pool.replace(slot)
                        actors[slot].load.remote(*self.load_args)  # queued before its first shard
                        continue
                    if key in done:
                        report.duplicates += 1
                        continue
                    done.add(key)
                    if not wanted(key):
                        report.discarded += 1
                        continue
                    report.accepted.append(key)
                    accept(key, value)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if inflight:  # early stop or an error: the pool's actors must not keep working
                for ref in inflight:
                    try:
                        ray.cancel(ref, force=False)
                    except Exception:  # noqa: BLE001 - finished or its actor is gone
                        pass

    def _lost(self, slot, key, err, inflight, pending, order) -> None:
        """The actor in ``slot`` died: requeue all its shards at the front, in plan order."""
        report = self.report
        report.failures += 1
        lost = [key] + [k for s, k in inflight.values() if s == slot]
        for ref in [ref for ref, (s, _) in inflight.items() if s == slot]:
            del inflight[ref]
        for k in sorted(lost, key=order.__getitem__, reverse=True):
            pending.appendleft(k)
        log.warning("Ray worker %d died (%s); redoing %d shard(s) on a new worker", slot, type(err).__name__, len(lost))
        if report.failures > self.max_failures:
            raise RuntimeError(
                f"{report.failures} Ray workers died in this run (limit {self.max_failures}); last error: {err}"
            ) from err


@contextlib.contextmanager
def _pool_for(pool: WorkerPool | None, workers: int, cpus_per_worker: float):
    """The given pool, or a temporary one closed at the end of the call."""
    if pool is not None:
        yield pool
        return
    temporary = WorkerPool(workers, cpus_per_worker)
    try:
        yield temporary
    finally:
        temporary.close()


def _cpu_model(model: nn.Module) -> nn.Module:
    """The model itself when it lives on the CPU, else a CPU copy (actors reserve no GPUs)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type != "cpu":
            return copy.deepcopy(model).cpu()
    return model


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


# ---------------------------------------------------------------------------------- statistics
def distributed_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    pool: WorkerPool | None = None,
    bins: int = 32,
    value: str = "gap",
    rank: bool = True,
    chip: bool = False,
    edge_batches: int = 1,
    shard_size: int | None = None,
    progress: bool = True,
    max_failures: int | None = None,
    return_report: bool = False,
    _fault: FaultInjection | None = None,
) -> ActivationStats | tuple[ActivationStats, RunReport]:
    """:func:`pruning.statistics.collect_activation_stats` on ``workers`` Ray actors.

    Edges from the first ``edge_batches`` batches on the driver; then shards of ``shard_size``
    batches (default: about four shards per worker) run on the actors and merge on the driver as
    they arrive. Equal to the in-process result: counts exactly, float sums up to order.
    With ``return_report``, returns ``(stats, RunReport)``; shard ids are batch-shard indices.
    ``pool``: run on the first ``workers`` (default: all) actors of a :class:`WorkerPool`
    (``cpus_per_worker`` is then the pool's) instead of actors started for this call.
    """
    wall = time.perf_counter()
    workers, cpus_per_worker = _resolve_workers(workers, cpus_per_worker, pool)
    if edge_batches < 1:
        raise ValueError(f"edge_batches must be at least 1, got {edge_batches}")
    inputs = [_inputs(b).detach().cpu() for b in batches]
    if not inputs:
        raise ValueError("no calibration batches to collect statistics from")
    groups = list(groups)
    edges = compute_histogram_edges(model, groups, inputs[:edge_batches], bins=bins, value=value)
    if shard_size is None:
        shard_size = max(1, math.ceil(len(inputs) / (4 * workers)))
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    shards = [(i, list(range(s, min(s + shard_size, len(inputs))))) for i, s in enumerate(range(0, len(inputs), shard_size))]
    report = RunReport("stats", workers, float(cpus_per_worker), shards=len(shards))

    put = time.perf_counter()
    model_ref = ray.put(_cpu_model(model))
    inputs_ref = ray.put(inputs)
    edges_ref = ray.put(edges)
    report.put_s = time.perf_counter() - put
    options = {"value": value, "rank": rank, "chip": chip}
    load_args = ("stats", model_ref, groups, inputs_ref, edges_ref, options)

    merged: list[ActivationStats] = []

    def accept(key, state: ActivationStats) -> None:
        merged[:] = [state if not merged else merged[0].merge(state)]

    with _pool_for(pool, workers, cpus_per_worker) as active:
        runner = _ShardRunner(active, workers, load_args, report, max_failures=max_failures, fault=_fault,
                              progress=progress, desc="activation stats")
        runner.run(shards, accept)
    report.wall_s = time.perf_counter() - wall
    result = merged[0]
    return (result, report) if return_report else result


# ------------------------------------------------------------------------------------ Shapley
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


class _GroupMerge:
    """In-block-order Chan merge of one group's blocks, with the epsilon stop."""

    def __init__(self, name: str, n_blocks: int, epsilon: float | None) -> None:
        self.name = name
        self.n_blocks = n_blocks
        self.epsilon = epsilon
        self.buffer: dict[int, ShapleyEstimate] = {}
        self.next = 0
        self.stats: RunningStats | None = None
        self.permutations = 0
        self.evaluations = 2  # v(N) and v(empty)
        self.endpoints: tuple[float, float] | None = None
        self.converged = False

    @property
    def done(self) -> bool:
        return self.converged or self.next >= self.n_blocks

    def add(self, k: int, est: ShapleyEstimate) -> None:
        self.buffer[k] = est
        while not self.done and self.next in self.buffer:
            block = self.buffer.pop(self.next)
            self.stats = block.stats if self.stats is None else self.stats.merge(block.stats)
            self.permutations += block.permutations
            self.evaluations += block.evaluations - 2
            self.endpoints = self.endpoints or (block.v_full, block.v_empty)
            self.next += 1
            if self.epsilon is not None and self.stats.count >= 2 and float(self.stats.stderr().max()) < self.epsilon:
                self.converged = True
        if self.done:
            self.buffer.clear()

    def estimate(self) -> ShapleyEstimate:
        stats = self.stats
        return ShapleyEstimate(stats.mean.clone(), stats.stderr(), self.permutations, self.evaluations,
                               self.endpoints[0], self.endpoints[1], stats)


def distributed_shapley(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    pool: WorkerPool | None = None,
    seed: int = 0,
    max_permutations: int = 8,
    block: int = 8,
    epsilon: float | None = None,
    antithetic: bool = True,
    truncation: float | None = 0.02,
    truncation_window: int | None = None,
    value: str = "logprob",
    batch_size: int = 32,
    mode: str = "auto",
    max_batch: int | None = None,
    exact_below: int = 0,
    progress: bool = True,
    max_failures: int | None = None,
    return_report: bool = False,
    _fault: FaultInjection | None = None,
) -> dict[str, ShapleyEstimate] | tuple[dict[str, ShapleyEstimate], RunReport]:
    """Permutation Shapley values of every group's channels, in blocks on ``workers`` Ray actors.

    Options as for the ``shapley`` criterion (:class:`pruning.criteria.shapley.ShapleyChannels`,
    whose ``batch_permutations`` is ``block`` here); the worth is computed on the first
    ``batch_size`` calibration images. TMC truncation uses ``truncation x |v(N) - v(empty)|``.
    Groups with at most ``exact_below`` channels (capped at 10) are enumerated exactly on the
    driver. Shard ids in the report are ``(group name, block index)``.

    Identical results for the same seed and block plan (``max_permutations``, ``block``,
    ``antithetic``), whatever the number of workers, the arrival order or actor failures.
    """
    wall = time.perf_counter()
    workers, cpus_per_worker = _resolve_workers(workers, cpus_per_worker, pool)
    groups = list(groups)
    if not groups:
        return ({}, RunReport("shapley", workers, float(cpus_per_worker))) if return_report else {}
    if epsilon is not None and epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    plan = shapley_block_plan(max_permutations, block, antithetic)
    inputs, targets = calibration_batch(calibration, batch_size)
    report = RunReport("shapley", workers, float(cpus_per_worker))
    exact_below = min(int(exact_below), EXACT_MAX_SIZE)

    results: dict[str, ShapleyEstimate] = {}
    merges: dict[str, _GroupMerge] = {}
    for g in groups:
        if g.size <= exact_below:
            game = LayerGame(model, g, inputs, targets, value=value, mode=mode, max_batch=max_batch)
            results[g.name] = exact_shapley(game)
        else:
            merges[g.name] = _GroupMerge(g.name, len(plan), epsilon)
    # round-robin over groups by block index: every group advances, the epsilon stop bites early
    shards = []
    for k, count in enumerate(plan):
        for name in merges:
            seed_k = np.random.SeedSequence(group_seed(seed, name)).spawn(k + 1)[k]
            shards.append(((name, k), (count, seed_k)))
    report.shards = len(shards)

    if merges:
        put = time.perf_counter()
        model_ref = ray.put(_cpu_model(model))
        inputs_ref, targets_ref = ray.put(inputs.detach().cpu()), ray.put(targets.detach().cpu())
        report.put_s = time.perf_counter() - put
        options = {"value": value, "mode": mode, "max_batch": max_batch, "antithetic": antithetic,
                   "truncation": truncation, "truncation_window": truncation_window}
        shapley_groups = [g for g in groups if g.name in merges]
        load_args = ("shapley", model_ref, shapley_groups, inputs_ref, targets_ref, options)
        with _pool_for(pool, workers, cpus_per_worker) as active:
            runner = _ShardRunner(active, workers, load_args, report, max_failures=max_failures, fault=_fault,
                                  progress=progress, desc="shapley blocks")
            runner.run(
                shards,
                accept=lambda key, est: merges[key[0]].add(key[1], est),
                wanted=lambda key: not merges[key[0]].done,
                finished=lambda: all(m.done for m in merges.values()),
            )
    for name, m in merges.items():
        results[name] = m.estimate()
        report.groups[name] = {"blocks": m.n_blocks, "merged": m.next, "converged": m.converged,
                               "permutations": m.permutations}
    report.wall_s = time.perf_counter() - wall
    ordered = {g.name: results[g.name] for g in groups}
    return (ordered, report) if return_report else ordered


# ------------------------------------------------------------------------ criterion adapter
class DistributedShapley(Criterion):
    """A ``shapley``/``snpfi`` criterion whose estimates run on Ray actors.

    Wraps a configured :class:`~pruning.criteria.shapley.ShapleyChannels` (or SNPFI) and takes
    every option from it (its ``batch_permutations`` is the block size), so ``score`` is a
    drop-in for the in-process one in :func:`pruning.pipeline.prune_with_criterion`.
    ``score_and_sparsity`` / ``layer_sparsity`` (SNPFI's automatic ratios) estimate on the actors
    and evaluate the utilization curves (n + 1 coalitions per group) on the driver.
    Connects to Ray (:func:`connect` with ``address``) on first use; ``last_report`` holds the
    :class:`RunReport` of the last estimation.
    """

    needs_calibration = True

    def __init__(
        self,
        base: Criterion,
        *,
        workers: int,
        cpus_per_worker: float = 1,
        address: str | None = None,
        pool: WorkerPool | None = None,
        progress: bool = False,
        log_to_driver: bool = True,
    ) -> None:
        from pruning.criteria.shapley import ShapleyChannels

        if not isinstance(base, ShapleyChannels):
            raise ValueError(f"criterion {base.name!r} has no distributed implementation; use shapley or snpfi")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        super().__init__(base.seed)
        self.base = base
        self.name = base.name
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.address = address
        self.pool = pool
        self.progress = progress
        self.log_to_driver = log_to_driver
        self.last_report: RunReport | None = None

    def estimates(self, model, groups, context: ScoringContext) -> dict[str, ShapleyEstimate]:
        """``{group name: ShapleyEstimate}``, estimated on the actors."""
        self.check_context(context)
        if self.pool is None:
            connect(self.address, self.workers, self.cpus_per_worker, log_to_driver=self.log_to_driver)
        b = self.base
        result, self.last_report = distributed_shapley(
            model, groups, context.calibration, workers=self.workers if self.pool is None else None,
            cpus_per_worker=self.cpus_per_worker, pool=self.pool, seed=b.seed, max_permutations=b.max_permutations,
            block=b.batch_permutations, epsilon=b.epsilon, antithetic=b.antithetic, truncation=b.truncation,
            value=b.value, batch_size=b.batch_size, mode=b.mode, max_batch=b.max_batch, exact_below=b.exact_below,
            progress=self.progress, return_report=True,
        )
        return result

    @staticmethod
    def _scores(estimates: Mapping[str, ShapleyEstimate]) -> dict[str, torch.Tensor]:
        return {
            name: torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
            for name, est in estimates.items()
        }

    def score(self, model, groups, context):
        return self._scores(self.estimates(model, groups, context))

    def score_and_sparsity(self, model, groups, context, tau: float | None = None):
        """(scores, sparsities) from one estimation pass, as ``SNPFI.score_and_sparsity``."""
        from pruning.games import snpfi_sparsity

        tau = getattr(self.base, "tau", 0.95) if tau is None else tau
        estimates = self.estimates(model, groups, context)
        sparsity = {game.group.name: snpfi_sparsity(game, estimates[game.group.name].values, tau)
                    for game in self.base.games(model, groups, context)}
        return self._scores(estimates), sparsity

    def layer_sparsity(self, model, groups, context, tau: float | None = None) -> dict[str, float]:
        return self.score_and_sparsity(model, groups, context, tau)[1]
