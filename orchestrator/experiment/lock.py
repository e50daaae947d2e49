"""One live sweep or study per run directory.

:class:`RunDirLock` holds an exclusive ``flock`` on ``RUN_DIR/.prunesweep.lock`` for as long as
the driver runs the experiment, and writes who holds it (host, pid, start time, command) into the
file. A second driver on the same run directory is refused at once, in one line naming the holder.
The kernel releases a ``flock`` when its process dies, however it dies (SIGKILL included), so a
lock file left by a killed driver is stale: the next driver takes it over and says so in one line.
On a filesystem shared between hosts where ``flock`` does not reach the other host, a file whose
holder is on another host counts as live (its process cannot be checked from here); the message
says which file to delete once that driver is known to be gone.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from orchestrator.experiment.checks import ConfigError

__all__ = ["LOCK_FILE", "RunDirLock"]

LOCK_FILE = ".prunesweep.lock"


class RunDirLock:
    """The run directory's lock (see the module docstring); a context manager, also released by
    :meth:`release`. ``what`` names the experiment in messages (``"sweep"``/``"study"``)."""

    def __init__(self, run_dir: str | os.PathLike, what: str = "sweep") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.what = what
        self._file: TextIO | None = None
        self._made_dir = False

    def acquire(self) -> RunDirLock:
        """Take the lock or raise :class:`ConfigError` (key ``run_dir``) naming its live holder."""
        self._made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = self._locked_file()
        except ConfigError:
            self._remove_dir_if_made()
            raise
        holder = _read(handle)
        if holder and holder.get("host") != socket.gethostname():
            handle.close()
            self._remove_dir_if_made()
            raise ConfigError("run_dir", f"{self.path.parent} is held by a {self.what} on another host "
                              f"({_describe(holder)}); once it has ended, delete {self.path}")
        if holder:
            print(f"note: taking over the lock of {self.path.parent} from a {self.what} that is gone "
                  f"({_describe(holder)})", file=sys.stderr, flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_this_process()))
        handle.flush()
        self._file = handle
        return self

    def _locked_file(self) -> TextIO:
        """The lock file, opened and flocked; a file its holder unlinked between our open and our
        flock is not the lock any more, so the open is repeated."""
        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(handle)
                handle.close()
                raise ConfigError("run_dir", f"{self.path.parent} is in use by a running {self.what} "
                                  f"({_describe(holder)}); wait for it to end or choose another run_dir") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()

    def release(self) -> None:
        """Remove the lock file and let the lock go (nothing when not held); a run directory the
        lock created and nothing else filled is removed too."""
        if self._file is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
        self._remove_dir_if_made()

    def _remove_dir_if_made(self) -> None:
        if self._made_dir:
            with contextlib.suppress(OSError):  # not empty: the experiment wrote into it
                self.path.parent.rmdir()

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv[:3])}


def _read(handle: TextIO) -> dict[str, Any]:
    handle.seek(0)
    try:
        data = json.loads(handle.read() or "{}")
    except ValueError:  # a lock file cut short by a crash: nobody to name
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
