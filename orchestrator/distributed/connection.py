"""Attaching this process to Ray, and checking that the actors asked for fit.

:func:`connect` joins a cluster (``address="auto"`` on a cluster node, ``ray://host:10001``
through the Ray client) or starts a local Ray without dashboard; see ``docs/cluster.md`` for what
a local Ray opens.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import ray

from orchestrator.distributed import network as private_network
from orchestrator.distributed import watchdog
from pruning.errors import InputError

# whether connect() started the Ray this process is attached to (False: started elsewhere or joined)
_local_started: bool = False


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
    * ``address=None``: start a local Ray with :func:`available_cpus` CPUs and no dashboard,
      whose processes end with this one (:mod:`.watchdog`; :func:`shutdown` stops it).
      Its core services (GCS, raylet, object manager, workers) bind all interfaces (Ray 2.60
      offers no loopback-only bind) and require the token that a local ``ray.init`` generates
      (token authentication, on by default for local clusters since Ray 2.59). Inside
      :mod:`orchestrator.distributed.network` (where the ``prunesweep`` command starts it by
      default, if the kernel allows) the only interface is loopback, so no port is reachable
      from another host.
    * ``address="auto"`` (on a node of a running cluster) or ``"ray://host:port"`` (Ray client):
      join that cluster.

    With ``workers`` given, checks that ``workers x cpus_per_worker`` CPUs exist: a local Ray
    raises :class:`~pruning.errors.InputError` (the actors would wait forever), a cluster only
    warns (an autoscaler may still add nodes).
    """
    global _local_started
    if workers is not None and workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    if cpus_per_worker <= 0:
        raise InputError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    reused = ray.is_initialized()
    started = False
    if not reused:
        if address is None:
            # Inside the private namespace there is no route for Ray's own IP detection to probe.
            node_ip = {"_node_ip_address": "127.0.0.1"} if private_network.active() else {}
            ray.init(num_cpus=available_cpus(), include_dashboard=False, log_to_driver=log_to_driver, **node_ip)
            # its processes end with this one, even a killed one (Ray names its session's
            # folder only through its node object)
            watchdog.start(ray._private.worker._global_node.get_session_dir_path())
            started = _local_started = True
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if workers:
        check_cpus(workers, cpus_per_worker, cpus, local=started or (reused and _local_started))
    return RayConnection(address=address, started=started, reused=reused, cpus=cpus)


def shutdown() -> None:
    """Stop the local Ray that :func:`connect` started and wait until none of its processes is left."""
    ray.shutdown()
    watchdog.stop()


def check_cpus(workers: int, cpus_per_worker: float, cpus: float, *, local: bool) -> None:
    """Refuse (local Ray) or warn about (cluster) more reserved CPUs than the cluster has."""
    need = workers * cpus_per_worker
    if need <= cpus:
        return
    message = (
        f"{workers} workers x {cpus_per_worker:g} CPUs need {need:g} CPUs, the Ray cluster has {cpus:g}"
    )
    if local:
        raise InputError(message + "; lower --workers/--cpus-per-worker or join a cluster with --address")
    warnings.warn(message + "; the actors wait until an autoscaler adds nodes", RuntimeWarning, stacklevel=3)


def ensure_ray(workers: int, cpus_per_worker: float) -> None:
    """Ray is up (a local one is started if not) and has room for ``workers`` actors."""
    if workers < 1:
        raise InputError(f"workers must be >= 1 for a distributed run, got {workers}")
    if cpus_per_worker <= 0:
        raise InputError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    if not ray.is_initialized():
        connect(None, workers, cpus_per_worker)
    else:
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        check_cpus(workers, cpus_per_worker, cpus, local=_local_started or len(ray.nodes()) == 1)
