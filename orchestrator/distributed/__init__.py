"""Everything that touches Ray for statistics and Shapley estimates: connecting, the loopback-only
private network, actor pools, the fault-tolerant shard scheduler and the statistics / Shapley fan-outs.

Names are re-exported lazily (PEP 562): ``prunesweep`` imports :mod:`.network` before it may
re-execute itself in a private network namespace, and must not import torch or Ray twice."""
from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "log": "core",
    "DEPTH": "core",
    "START_TIMEOUT": "core",
    "RayConnection": "core",
    "available_cpus": "core",
    "connect": "core",
    "FaultInjection": "core",
    "RunReport": "core",
    "WorkerPool": "core",
    "distributed_stats": "core",
    "shapley_block_plan": "core",
    "distributed_shapley": "core",
    "DistributedShapley": "core",
    "ACTIVE_ENV": "network",
    "LOOPBACK_HOSTS": "network",
    "CLONE_NEWUSER": "network",
    "CLONE_NEWNET": "network",
    "EXIT_UNAVAILABLE": "network",
    "PrivateNetworkError": "network",
    "enter": "network",
    "active": "network",
    "interfaces": "network",
    "exec_module": "network",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
