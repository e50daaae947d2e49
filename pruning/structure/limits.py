"""What preparing a model for pruning may cost, and what the tracer cannot handle.

Building a :class:`~pruning.structure.engine.PruningSpace` traces the model with
Torch-Pruning's ``DependencyGraph`` and expands every pruning group through the index mappings
of the traced ops. Some architectures make that expansion explode: Swin's window partitions
are reshapes that Torch-Pruning maps by repeating channel indices, and the index lists grow
past any memory. :func:`within_budget` bounds the preparation by wall-clock time and by the
growth of the process's resident memory, and turns an overrun into one line naming the
budget, instead of a machine out of memory. :func:`unsupported_op` names the layer next to an
op the tracer failed on (e.g. ShuffleNet's channel shuffle, a view that regroups channels).
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

from torch import nn

from pruning.errors import InputError
from pruning.structure.errors import PruningError

#: environment variables that raise the default budget (e.g. for a large model on a big machine)
SECONDS_VARIABLE = "PRUNESWEEP_PREPARE_SECONDS"
MEMORY_VARIABLE = "PRUNESWEEP_PREPARE_MEMORY_GB"
#: how often the watchdog looks at the clock and the resident memory
_POLL_SECONDS = 0.02


class PreparationBudgetError(PruningError):
    """Preparing the model for pruning needed more time or memory than its budget."""


class UnsupportedStructureError(PruningError):
    """The model holds an op that the pruning engine's tracer cannot map channels through."""


@dataclass(frozen=True)
class PreparationBudget:
    """Limits on building a ``PruningSpace``: ``seconds`` of wall-clock time and ``memory_gb``
    GiB of growth of the process's resident memory."""

    seconds: float = 60.0
    memory_gb: float = 4.0

    def __post_init__(self) -> None:
        for name in ("seconds", "memory_gb"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"preparation budget {name} must be a positive number, got {value!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> PreparationBudget:
        """The default budget, with ``PRUNESWEEP_PREPARE_SECONDS`` / ``_MEMORY_GB`` where set."""
        values = {}
        for field, variable in (("seconds", SECONDS_VARIABLE), ("memory_gb", MEMORY_VARIABLE)):
            if environ.get(variable):
                try:
                    values[field] = float(environ[variable])
                except ValueError:
                    raise InputError(f"{variable} must be a number, got {environ[variable]!r}") from None
        return cls(**values)


class _BudgetExceeded(BaseException):
    """Raised asynchronously in the preparing thread by the watchdog (a BaseException, so that
    no ``except Exception`` in the traced code swallows it)."""


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc: the peak is the best bound available
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def within_budget(budget: PreparationBudget, what: str) -> Iterator[None]:
    """Run the block under ``budget``; an overrun stops it with a one-line
    :class:`PreparationBudgetError` that names the budget and how to raise it."""
    thread_id = threading.get_ident()
    start, base = time.monotonic(), _resident_bytes()
    lock, done, overrun = threading.Lock(), threading.Event(), []

    def watch() -> None:
        while not done.wait(_POLL_SECONDS):
            elapsed, grown = time.monotonic() - start, (_resident_bytes() - base) / 2**30
            if overrun or elapsed > budget.seconds or grown > budget.memory_gb:
                # again at every poll until the block ends: an exception that lands in a
                # finaliser (frequent while memory churns) is swallowed by the interpreter
                with lock:
                    if not done.is_set():
                        overrun.append((elapsed, grown))
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(thread_id), ctypes.py_object(_BudgetExceeded))

    watchdog = threading.Thread(target=watch, name="preparation-budget", daemon=True)
    watchdog.start()
    try:
        try:
            yield
        finally:
            with lock:
                done.set()
            watchdog.join()
    except _BudgetExceeded:
        pass
    if overrun:
        elapsed, grown = overrun[0]
        raise PreparationBudgetError(
            f"{what} exceeded its budget of {budget.seconds:g} s and {budget.memory_gb:g} GiB "
            f"(stopped after {elapsed:.0f} s, {grown:.1f} GiB more memory); raise it with "
            f"{SECONDS_VARIABLE} / {MEMORY_VARIABLE} or PruningSpace.build(..., budget=PreparationBudget(...))"
        )


def unsupported_op(error: BaseException, model: nn.Module) -> UnsupportedStructureError | None:
    """A one-line error naming the layer next to the traced op Torch-Pruning failed on, or None
    when ``error`` did not come from mapping channels through an op."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or "torch_pruning" not in frames[-1].f_code.co_filename:
        return None
    node = next((f.f_locals["node"] for f in reversed(frames) if "node" in f.f_locals), None)
    if node is None:
        return None
    names = {module: name for name, module in model.named_modules()}
    layer = _nearest_layer(node, names)
    op = str(getattr(node, "name", "an op")).split("(")[0]
    where = f"after layer {layer!r}" if layer else "in the model"
    return UnsupportedStructureError(
        f"the model cannot be traced for pruning {where}: the op {op} regroups channels in a way the "
        f"engine cannot follow (e.g. ShuffleNet's channel shuffle; {type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no message'})"
    )


def _nearest_layer(node, names: Mapping[nn.Module, str]) -> str | None:
    """The closest named module upstream of a traced node (breadth first)."""
    frontier, seen = [node], set()
    while frontier:
        following = []
        for current in frontier:
            if id(current) in seen:
                continue
            seen.add(id(current))
            if names.get(getattr(current, "module", None)):
                return names[current.module]
            following.extend(getattr(current, "inputs", ()))
        frontier = following
    return None
