"""What every command returns: the readable text and the JSON-able data."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

__all__ = ["CommandResult", "experiment_result"]


@dataclass(frozen=True)
class CommandResult:
    """``exit_status``: the process's (0; ``128 + signal`` for a sweep or study a SIGTERM or
    SIGHUP stopped, as a shell reports a process that signal ended)."""

    text: str
    data: dict[str, Any]
    exit_status: int = 0


def experiment_result(result: Any) -> CommandResult:
    """The command result of a sweep or study: its text and data, and ``128 + signal`` as the
    exit status where a SIGTERM or SIGHUP stopped it (``result.stopped_by``)."""
    stopped = getattr(result, "stopped_by", None)
    return CommandResult(result.text(), result.to_dict(), 0 if stopped is None else 128 + signal.Signals[stopped].value)
