"""Everything that touches Ray for statistics and Shapley estimates.

* :mod:`.connection`: :func:`connect` (join a cluster or start a local Ray), :func:`shutdown`, CPU checks;
* :mod:`.watchdog`: a local Ray's processes end with the driver that started it;
* :mod:`.network`: the loopback-only private network namespace a local Ray runs in;
* :mod:`.pool`: :class:`WorkerPool`, the actors that hold one model replica each;
* :mod:`.options`: :class:`ShardOptions`, how a distributed run's shards run;
* :mod:`.scheduler`: the fault-tolerant shard scheduler and its :class:`RunReport`;
* :mod:`.stats`: :func:`distributed_stats`; :mod:`.shapley`: :func:`distributed_shapley` and
  :class:`DistributedShapley`, the Ray estimator of the ``shapley``/``snpfi`` criteria.

Names are re-exported lazily (PEP 562): ``prunesweep`` imports :mod:`.network` before it may
re-execute itself in a private network namespace, and must not import torch or Ray twice.
"""
from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "RayConnection": "connection",
    "available_cpus": "connection",
    "connect": "connection",
    "shutdown": "connection",
    "WorkerPool": "pool",
    "ShardOptions": "options",
    "DEPTH": "scheduler",
    "START_TIMEOUT": "scheduler",
    "RunReport": "scheduler",
    "distributed_stats": "stats",
    "distributed_shapley": "shapley",
    "DistributedShapley": "shapley",
    "ACTIVE_ENV": "network",
    "LOOPBACK_HOSTS": "network",
    "CLONE_NEWUSER": "network",
    "CLONE_NEWNET": "network",
    "EXIT_UNAVAILABLE": "network",
    "PrivateNetworkError": "network",
    "enter": "network",
    "active": "network",
    "decided": "network",
    "interfaces": "network",
    "exec_module": "network",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
