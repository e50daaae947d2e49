"""The fault-tolerant shard scheduler behind every distributed run, and its :class:`RunReport`.

Every actor of the run first ``load`` s the run's task (a class and its arguments); then shards
(``key -> payload``) go to the actors, :data:`DEPTH` in flight per actor, and each result is
handed to ``accept`` as it arrives. When an actor dies (``RayActorError``), every shard it held
is put back at the front of the queue, in plan order, and a fresh actor replaces it (at most
``max_failures`` times per run). Shard keys are accepted at most once, so no shard is counted
twice; the report lists them in acceptance order.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import ray

from orchestrator.distributed.pool import WorkerPool

log = logging.getLogger(__name__)

#: shards in flight per actor: the next one is already queued while the current one runs
DEPTH = 2
#: seconds to wait for the actors to come up before giving up
START_TIMEOUT = 300.0
_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)


@dataclass
class RunReport:
    """What a distributed run did.

    ``accepted``: shard ids whose results were taken, in arrival order (each at most once);
    ``dispatched``: shard hand-outs including redos; ``failures``: actors lost mid-run (each
    replaced by a fresh one); ``discarded``: results that came back after their group had
    converged; ``duplicates``: results of shards already accepted (dropped); ``started_workers``:
    actors started for this run (0 with a warm :class:`WorkerPool`); ``put_s``: object-store
    puts; ``start_s``: from asking for the actors until every one has started and loaded its model
    replica; ``wall_s``: the whole call. ``groups`` (Shapley only): per group ``{blocks, merged,
    converged, permutations}``. ``nodes`` (statistics only): Ray node id -> shards accepted from
    actors on that node (which machines did the work on a cluster).
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
    nodes: dict = field(default_factory=dict)


class ShardRunner:
    """Hands shards to the first ``report.workers`` actors of ``pool``, replaces dead actors and
    redoes their shards.

    ``task``: ``(task class, *args)``, built once on every actor (and every replacement) as
    ``task_class(*args)``; a shard then calls it as ``task(key, payload)``.
    """

    def __init__(
        self,
        pool: WorkerPool,
        task: tuple,
        report: RunReport,
        *,
        max_failures: int | None = None,
        progress: bool = False,
        desc: str = "shards",
    ) -> None:
        self.pool = pool
        self.workers = workers = report.workers
        self.task = task
        self.report = report
        self.max_failures = 2 * workers + 2 if max_failures is None else max_failures
        self.progress = progress
        self.desc = desc

    def run(
        self,
        shards: Sequence[tuple[Hashable, Any]],
        accept: Callable[[Hashable, Any], None],
        wanted: Callable[[Hashable], bool] = lambda key: True,
        finished: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run ``shards`` (``(key, payload)`` pairs, in plan order). ``accept(key, value)`` takes
        one result (called at most once per key); ``wanted(key)`` says whether a shard still needs
        doing (False drops it from the queue and discards its late result); ``finished()`` ends
        the run early."""
        report, pool = self.report, self.pool
        payload = dict(shards)
        order = {key: i for i, (key, _) in enumerate(shards)}
        pending = collections.deque(key for key, _ in shards)
        done: set = set()
        inflight: dict[Any, tuple[int, Hashable]] = {}  # ref -> (slot, key)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(shards), desc=self.desc, unit="shard")
        started = time.perf_counter()
        before = pool.started
        actors = pool.acquire()[: self.workers]
        report.started_workers = pool.started - before
        try:
            self._load(actors)
            report.start_s = time.perf_counter() - started
            while not finished():
                # hand out work: every actor gets up to DEPTH shards
                for slot, actor in enumerate(actors):
                    busy = sum(1 for s, _ in inflight.values() if s == slot)
                    while busy < DEPTH and pending:
                        key = pending.popleft()
                        if key in done or not wanted(key):
                            continue
                        inflight[actor.run.remote(key, payload[key])] = (slot, key)
                        report.dispatched += 1
                        busy += 1
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    slot, key = inflight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except _LOST as err:
                        self._lost(slot, key, err, inflight, pending, order)
                        actors[slot] = pool.replace(slot)
                        actors[slot].load.remote(*self.task)  # queued before its first shard
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

    def _load(self, actors: list) -> None:
        """Build the task on every actor; a pooled actor that died between runs is replaced first."""
        try:
            ray.get([a.load.remote(*self.task) for a in actors], timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{self.workers} Ray workers did not start within {START_TIMEOUT:.0f} s; does the cluster have "
                f"{self.workers} x {self.pool.cpus_per_worker:g} free CPUs?"
            ) from None
        except _LOST:
            for slot in range(len(actors)):
                actors[slot] = self.pool.replace(slot)
            ray.get([a.load.remote(*self.task) for a in actors], timeout=START_TIMEOUT)

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
