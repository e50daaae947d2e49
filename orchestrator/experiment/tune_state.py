"""Tune's experiment state in a run directory, kept resumable across a full disk.

Tune writes its state (``experiment_state-<session>.json``, the searcher's and the callbacks'
pickles of the same session) into a staging folder and copies it into ``<run_dir>/<experiment>``
at every snapshot. A copy cut short by a full disk leaves a file Tune cannot read, and a restore
that cannot read its newest state starts the experiment over. :class:`StateBackup` keeps the last
snapshot that reads back whole in ``<run_dir>/.tune-backup/<experiment>/<n>/`` (a new folder per
copy, marked complete last; the older one removed only then). Before a resume,
:func:`recover_state` checks the newest snapshot and puts that copy (or an earlier session's
snapshot, where newer) back in place of one that does not read back, or refuses in one line
naming the file.
"""
from __future__ import annotations

import json
import pickletools
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from ray import tune

from orchestrator.experiment.checks import ConfigError
from pruning.utils import atomic_write

__all__ = ["BACKUP_FOLDER", "StateBackup", "recover_state", "unreadable_state"]

#: the run directory's folder of the copies
BACKUP_FOLDER = ".tune-backup"
#: seconds between two looks at Tune's snapshot (it writes one every second, see runner.py)
CHECK_PERIOD_S = 1.0
#: the file written last into a complete copy
COMPLETE_MARKER = "complete"
#: the file Tuner.restore reads first, written once when the experiment starts
TUNER_FILE = "tuner.pkl"
_STATE_FILE = re.compile(r"^experiment_state-(?P<session>.+)\.json$")


def _sessions(folder: Path) -> list[str]:
    """The sessions (driver start times) whose experiment state ``folder`` holds, newest first."""
    found = [m["session"] for p in folder.glob("experiment_state-*.json") if (m := _STATE_FILE.match(p.name))]
    return sorted(found, reverse=True)


def _session_files(folder: Path, session: str) -> list[Path]:
    """The state files of ``session`` in ``folder``: its experiment state, searcher and callbacks."""
    ends = (f"-{session}.json", f"-{session}.pkl")
    return sorted(p for p in folder.iterdir() if p.name.endswith(ends) and p.is_file())


def readable(path: Path) -> bool:
    """``path`` reads back whole: the experiment state as JSON, the others as complete pickles
    (scanned to their STOP opcode, nothing unpickled)."""
    try:
        data = path.read_bytes()
        if _STATE_FILE.match(path.name):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except (OSError, ValueError):  # cut short: no closing brace, or no STOP opcode
        return False
    return True


def unreadable_state(folder: str | Path) -> Path | None:
    """The first file of the newest snapshot in the experiment ``folder`` that does not read
    back whole (``tuner.pkl`` included); None where all do."""
    folder = Path(folder)
    sessions = _sessions(folder)
    files = [folder / TUNER_FILE, *(_session_files(folder, sessions[0]) if sessions else [])]
    return next((p for p in files if not readable(p)), None)


def _copies(folder: Path) -> list[Path]:
    """The copies of the experiment ``folder``'s snapshots, newest first."""
    root = folder.parent / BACKUP_FOLDER / folder.name
    numbered = [p for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return sorted(numbered, key=lambda p: int(p.name), reverse=True)


def _whole(folder: Path, session: str) -> bool:
    return all(map(readable, _session_files(folder, session)))


def _readable_snapshot(folder: Path) -> tuple[Path, str] | None:
    """(where, session) of the newest snapshot that reads back whole: the newest complete copy,
    or an earlier session's snapshot in ``folder`` itself where that is newer; None if none."""
    copies = ((copy, _sessions(copy)) for copy in _copies(folder) if (copy / COMPLETE_MARKER).is_file())
    copy = next(((copy, sessions[0]) for copy, sessions in copies if sessions and _whole(copy, sessions[0])), None)
    earlier = next(((folder, s) for s in _sessions(folder)[1:] if _whole(folder, s)), None)
    return max((found for found in (copy, earlier) if found), key=lambda found: found[1], default=None)


class StateBackup(tune.Callback):
    """Copies the newest snapshot of the experiment in the folder ``experiment`` into
    ``.tune-backup`` whenever it changed and reads back whole (see the module docstring)."""

    #: the folder of the experiment being restored, which a restored backup takes: the one it was
    #: pickled with names where the run directory was (it may have been copied or moved since)
    restoring: ClassVar[str | None] = None

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self._copied: tuple | None = None  # (name, mtime, size) of each file last copied
        self._next_look = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_copied": None, "_next_look": 0.0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if StateBackup.restoring is not None:
            self.experiment = StateBackup.restoring

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + CHECK_PERIOD_S
            self.copy()

    def on_experiment_end(self, trials: list, **info) -> None:
        self.copy()

    def copy(self) -> None:
        """Copy the newest snapshot if it changed since the last copy and reads back whole; a
        copy the disk refuses is dropped, the previous one stays."""
        folder = Path(self.experiment)
        sessions = _sessions(folder) if folder.is_dir() else []
        if not sessions:
            return
        files = _session_files(folder, sessions[0])
        try:
            seen = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        except OSError:  # replaced while listed: the next look copies it
            return
        if seen == self._copied or not _whole(folder, sessions[0]):
            return  # unchanged, or being written: the last copy stays
        copies = _copies(folder)
        target = folder.parent / BACKUP_FOLDER / folder.name / str(int(copies[0].name) + 1 if copies else 0)
        try:
            target.mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, target / path.name)
            (target / COMPLETE_MARKER).touch()
        except OSError:  # a full disk: keep the previous copy, the only whole one
            shutil.rmtree(target, ignore_errors=True)
            return
        for older in copies:
            shutil.rmtree(older, ignore_errors=True)
        self._copied = seen


def recover_state(folder: str | Path, what: str) -> str | None:
    """Make the experiment ``folder``'s newest snapshot readable before Tune restores it (Tune
    would start ``what``, e.g. "the sweep", over). One that does not read back is replaced by
    the newest that does (:func:`_readable_snapshot`), the files of later sessions set aside as
    ``*.unreadable``; returns the note that says so, None where nothing was unreadable. Raises a
    one-line :class:`ConfigError` naming the file where no snapshot reads back."""
    folder = Path(folder)
    bad = unreadable_state(folder)
    if bad is None:
        return None
    found = _readable_snapshot(folder) if bad.name != TUNER_FILE else None
    if found is None:
        raise ConfigError("resume", f"{bad} does not read back (cut short, e.g. by a full disk) and no readable "
                          f"copy of it is kept: {what} cannot be resumed; run it again in another run_dir")
    source, session = found
    kept = {p.name for p in _session_files(source, session)}
    for later in (s for s in _sessions(folder) if s >= session):
        for path in _session_files(folder, later):
            if path.name not in kept:
                path.rename(path.with_name(path.name + ".unreadable"))
    if source != folder:
        for path in _session_files(source, session):
            atomic_write(folder / path.name, lambda tmp, copy=path: shutil.copyfile(copy, tmp))
    return (f"note: {bad} did not read back (cut short, e.g. by a full disk); resuming {what} from the "
            f"last snapshot that does, {source / f'experiment_state-{session}.json'}")
