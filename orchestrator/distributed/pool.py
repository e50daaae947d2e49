"""Ray actors that hold one model replica each and work on shards of a run.

An actor (``_Worker``) runs single-threaded torch by default (``torch.set_num_threads(int(
cpus_per_worker))``) and reserves ``cpus_per_worker`` CPUs, so ``workers x cpus_per_worker``
CPUs are needed; with ``gpus_per_worker > 0`` each also reserves that share of a GPU and moves
its model replica there (``ray.get_gpu_ids()`` non-empty). Per run it ``load`` s one task (a
class and its arguments, the model replica and the data, resolved from the object store by Ray)
and then ``run`` s shards of it. Actors run
with at-most-once task semantics (``max_task_retries=0``, no restarts): the scheduler, not Ray,
redoes the shards of an actor that died.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import ray
import torch
from torch import nn

from orchestrator.distributed.connection import ensure_ray
from pruning.errors import InputError
from pruning.utils import model_device


class _Worker:
    """The actor: single-threaded torch (``threads``), one task (model replica + data) at a time;
    the replica on the GPU when Ray gave the actor one (CPU otherwise)."""

    def __init__(self, threads: float) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.task: Callable[[Any, Any], Any] | None = None
        self.device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")

    def load(self, task: type, *args) -> None:
        self.task = None  # free the previous replica before building the next
        if self.device.type != "cpu":  # the task's loops put their batches on the model's device
            args = tuple(a.to(self.device) if isinstance(a, nn.Module) else a for a in args)
        self.task = task(*args)

    def run(self, key, payload):
        return self.task(key, payload)


class WorkerPool:
    """Ray actors that outlive one call, so that several distributed runs in one driver (a test
    module, a sweep driver) pay the worker start (a Python process importing torch) once.

    Each actor reserves ``cpus_per_worker`` CPUs for as long as the pool lives: close it (or use
    it as a context manager) before other Ray work needs those CPUs. Without a pool, every
    distributed call starts and ends its own actors.
    """

    def __init__(self, workers: int, cpus_per_worker: float = 1, gpus_per_worker: float = 0) -> None:
        ensure_ray(workers, cpus_per_worker)
        check_gpus(workers, gpus_per_worker)
        self.workers = int(workers)
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = float(gpus_per_worker)
        self.actors: list[Any] = []
        self.started = 0
        self.closed = False
        self._cls = ray.remote(_Worker).options(num_cpus=cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                max_restarts=0, max_task_retries=0)

    def _start(self):
        self.started += 1
        return self._cls.remote(self.cpus_per_worker)

    def acquire(self) -> list[Any]:
        """The pool's actors, starting any that are missing."""
        if self.closed:
            raise InputError("the worker pool is closed")
        while len(self.actors) < self.workers:
            self.actors.append(self._start())
        return list(self.actors)

    def replace(self, slot: int) -> Any:
        """Kill the actor in ``slot`` (if still alive) and start a fresh one there."""
        kill_actor(self.actors[slot])
        self.actors[slot] = self._start()
        return self.actors[slot]

    def close(self) -> None:
        for actor in self.actors:
            kill_actor(actor)
        self.actors = []
        self.closed = True

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_gpus(workers: int, gpus_per_worker: float) -> None:
    """Refuse a negative ``gpus_per_worker``, or more GPUs than the Ray cluster has (one line)."""
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or not gpus_per_worker >= 0:
        raise InputError(f"gpus_per_worker must be a number >= 0, got {gpus_per_worker!r}")
    if gpus_per_worker == 0:
        return
    have = float(ray.cluster_resources().get("GPU", 0))
    if have == 0:
        raise InputError(f"gpus_per_worker is {gpus_per_worker:g} but the Ray cluster has no GPU; use 0")
    # fractional shares pack several actors onto a GPU; Ray queues what does not fit
    if gpus_per_worker > have:
        raise InputError(f"gpus_per_worker {gpus_per_worker:g} is more than the Ray cluster's {have:g} GPU(s)")


def kill_actor(actor) -> None:
    """``ray.kill`` without restart; an actor that is already gone is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def resolve_workers(workers: int | None, cpus_per_worker: float, pool: WorkerPool | None) -> tuple[int, float]:
    """``(workers, cpus_per_worker)`` of a run: the first ``workers`` (default: all) actors of
    ``pool`` at the pool's CPUs, or ``workers`` new actors (Ray started if needed)."""
    if pool is not None:
        if pool.closed:
            raise InputError("the worker pool is closed")
        if workers is None:
            return pool.workers, pool.cpus_per_worker
        if not 1 <= workers <= pool.workers:
            raise InputError(f"workers must be in 1..{pool.workers} (the pool's size), got {workers}")
        return int(workers), pool.cpus_per_worker
    if workers is None:
        raise InputError("give workers (>= 1) or a WorkerPool")
    ensure_ray(workers, cpus_per_worker)
    return int(workers), float(cpus_per_worker)


@contextlib.contextmanager
def pool_for(pool: WorkerPool | None, workers: int, cpus_per_worker: float,
             gpus_per_worker: float = 0) -> Iterator[WorkerPool]:
    """The given pool, or a temporary one closed at the end of the call."""
    if pool is not None:
        yield pool
        return
    with WorkerPool(workers, cpus_per_worker, gpus_per_worker) as temporary:
        yield temporary


def cpu_model(model: nn.Module) -> nn.Module:
    """The model itself when it lives on the CPU, else a CPU copy (what goes into the object
    store; an actor with a GPU moves its replica there itself)."""
    return model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
