"""How a distributed run's shards run: :class:`ShardOptions` (the actors, their resources, the
failure allowance, the progress bar, what the call returns)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pruning.errors import InputError

if TYPE_CHECKING:
    from orchestrator.distributed.pool import WorkerPool

__all__ = ["ShardOptions"]


def _positive_int(name: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InputError(f"{name} must be an integer >= {minimum} or None, got {value!r}")


@dataclass(frozen=True)
class ShardOptions:
    """Where and how the shards of :func:`~orchestrator.distributed.distributed_stats` and
    :func:`~orchestrator.distributed.distributed_shapley` run.

    * ``workers``: how many actors (with a ``pool``: its first ``workers``, default all of them;
      without one it must be given); ``cpus_per_worker`` (the pool's when there is one),
      ``gpus_per_worker``: what each new actor reserves (its replica then runs on the GPU).
    * ``pool``: a warm :class:`~orchestrator.distributed.WorkerPool` to run on instead of actors
      started for this call.
    * ``shard_size``: batches per shard of the statistics pass (default: about four shards per
      worker); Shapley shards are blocks of ``ShapleyOptions.batch_permutations`` permutations.
    * ``max_failures``: actors that may be lost (and replaced) in one run (default
      2 x workers + 2); ``progress``: a progress bar over the shards.
    * ``return_report``: return ``(result, RunReport)`` instead of the result alone.

    Every field is checked when the value is built (:class:`~pruning.errors.InputError` naming it).
    """

    workers: int | None = None
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    pool: WorkerPool | None = None
    shard_size: int | None = None
    max_failures: int | None = None
    progress: bool = True
    return_report: bool = False

    def __post_init__(self) -> None:
        _positive_int("workers", self.workers, 1)
        _positive_int("shard_size", self.shard_size, 1)
        _positive_int("max_failures", self.max_failures, 0)
        for name, minimum in (("cpus_per_worker", 0.0), ("gpus_per_worker", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                raise InputError(f"{name} must be a number >= {minimum:g}, got {value!r}")
        if not self.cpus_per_worker > 0:
            raise InputError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        for name in ("progress", "return_report"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> ShardOptions:
        """A copy with ``changes`` (checked like a new value)."""
        return dataclasses.replace(self, **changes)
