"""SIGTERM and SIGHUP end an experiment the way Ctrl-C does.

``kill``, systemd, Kubernetes and Slurm stop a process with SIGTERM; a closed terminal sends
SIGHUP. Ray's driver would die of either with a native stack dump. Within
:func:`terminations_as_interrupts`, each is turned into a SIGINT to this process instead, so
Tune takes the path of a Ctrl-C: it saves the experiment's state and stops the running trials,
and the sweep or study ends with its resume hint. The signal that arrived is recorded, so that
the command exits with the conventional status ``128 + signal number`` (143 for SIGTERM, 129 for
SIGHUP) rather than 0.
"""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Iterator

__all__ = ["TERMINATING_SIGNALS", "Termination", "terminations_as_interrupts"]

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Termination:
    """The terminating signal received within the block (None: none)."""

    signal: int | None = None

    @property
    def name(self) -> str | None:
        return None if self.signal is None else signal.Signals(self.signal).name


@contextlib.contextmanager
def terminations_as_interrupts(termination: Termination) -> Iterator[Termination]:
    """Within the block, SIGTERM and SIGHUP are recorded in ``termination`` and raised again as
    SIGINT; the previous handlers come back at its end. Installed after Ray is up, so that these
    handlers, not the ones Ray's driver sets, receive the signals. Only the main thread can
    install signal handlers: elsewhere the block changes nothing."""
    def interrupt(signum, frame) -> None:
        termination.signal = signum
        signal.raise_signal(signal.SIGINT)

    try:
        previous = {s: signal.signal(s, interrupt) for s in TERMINATING_SIGNALS}
    except ValueError:  # not the main thread
        yield termination
        return
    try:
        yield termination
    finally:
        for s, handler in previous.items():  # None: a handler set outside Python (Ray's)
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
