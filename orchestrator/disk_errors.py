"""Telling a full disk or a read-only filesystem apart from any other error, wherever it surfaces.

A write that fails for lack of space (ENOSPC, EDQUOT), on a read-only filesystem (EROFS) or in a
folder the user may not write (EACCES, an ``OSError`` of the driver's own only) reaches
the driver as an ``OSError`` of its own, or wrapped: by Ray (a trial's error, carried as text from
the worker), by pyarrow (Tune's copies into the run directory) or by MLflow (SQLite's "database or
disk is full"). :func:`find_disk_error` looks through an exception's chain and its text for one,
so that the command can stop with one line naming the path instead of a traceback.

Imports nothing heavy: the command line uses it before it knows which command runs.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskError", "find_disk_error", "find_disk_error_in_text", "free_bytes", "format_bytes"]

#: the errnos of an ``OSError`` that count: permission denied only there (as text it is too
#: common to tell a run directory's from any other)
_CODES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
#: what the message of each errno (as ``os.strerror`` words it) and of SQLite says
_MESSAGES = {
    os.strerror(errno.ENOSPC): errno.ENOSPC,
    os.strerror(errno.EDQUOT): errno.EDQUOT,
    os.strerror(errno.EROFS): errno.EROFS,
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
}
#: a quoted absolute path, as Python's OSError, pyarrow and SQLite name the file
_QUOTED_PATH = re.compile(r"""['"](/[^'"\n]+)['"]""")


@dataclass(frozen=True)
class DiskError:
    """A write refused for lack of space or on a read-only filesystem: ``code`` (ENOSPC, EDQUOT,
    EROFS or EACCES) and the ``path`` written, where the error names it."""

    code: int
    path: str | None = None

    @property
    def full(self) -> bool:
        """Space ran out (or the quota): freeing space lets the write succeed."""
        return self.code in (errno.ENOSPC, errno.EDQUOT)

    @property
    def reason(self) -> str:
        return {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}[self.code]

    def as_os_error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code), self.path)

    def describe(self, fallback: str | os.PathLike | None = None) -> str:
        """``<reason>: <path>`` (``<reason> in <fallback>`` where the error named no path), with
        the free space of a full disk."""
        where = f": {self.path}" if self.path else (f" in {fallback}" if fallback is not None else "")
        path = self.path or fallback
        free = free_bytes(path) if self.full and path is not None else None
        return f"{self.reason}{where}" + (f" ({format_bytes(free)} free there)" if free is not None else "")


def find_disk_error(err: BaseException | None) -> DiskError | None:
    """The :class:`DiskError` in ``err``, its causes and contexts (Ray's ``cause`` too), or in
    their messages; None where none is one."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _CODES:
            path = current.filename if isinstance(current.filename, str) else None
            return DiskError(current.errno, path)
        found = find_disk_error_in_text(str(current))
        if found is not None:
            return found
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def find_disk_error_in_text(text: str | None) -> DiskError | None:
    """The :class:`DiskError` a message or traceback text reports (the last one: a traceback's
    own error comes last), with the path quoted on its line; None where it reports none."""
    if not text:
        return None
    for line in reversed(text.splitlines()):
        for message, code in _MESSAGES.items():
            if message in line:
                paths = _QUOTED_PATH.findall(line)
                return DiskError(code, paths[-1] if paths else None)
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem of ``path`` (its nearest existing folder); None if unknown."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``; below 1 KiB, ``N bytes``."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(count), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{count} bytes" if unit == 0 else f"{value:.1f} {units[unit]}"
