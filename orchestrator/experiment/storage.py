"""A full disk or a read-only filesystem under a run directory: refused before a stage starts
where it can be seen, else stopped at the first write it refuses, in one line.

:func:`check_free_space` refuses a stage that the run directory's free space cannot hold.
:class:`StorageGuard`, a Tune callback, stops the experiment as Ctrl-C does at the first trial
that failed for lack of space or on a read-only filesystem (Tune would go on starting trials
that all fail the same way, each with its traceback), so that Tune keeps every other trial as
it is and a resume runs that trial again. :func:`storage_error` turns such an error, wherever it
was raised, into a :class:`StorageError`: one line naming the path, with how to resume; within
:func:`quiet_disk_errors` Ray, Tune and MLflow do not log it (with its traceback) first.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import ClassVar, Iterator

from ray import tune

from orchestrator.disk_errors import DiskError, find_disk_error, find_disk_error_in_text, format_bytes, free_bytes
from orchestrator.experiment.callback import logger as trial_logger, trial_error_text
from orchestrator.experiment.checks import ConfigError
from pruning.errors import InputError

__all__ = ["MIN_FREE_BYTES", "StorageError", "storage_error", "check_free_space", "StorageGuard", "quiet_disk_errors"]

#: free space a stage needs in the run directory besides its trials' checkpoints: Tune's state
#: and result files, the MLflow store where it lies there, the statistics
MIN_FREE_BYTES = 64 * 1024 * 1024


class StorageError(ConfigError):
    """The run directory's disk is full or read-only (exit status 2, one line)."""


def storage_error(err: BaseException | None, run_dir: str | os.PathLike, resume: str | None) -> StorageError | None:
    """The :class:`StorageError` of ``err`` if a full disk or a read-only filesystem caused it
    (``resume``: the command that resumes the experiment, None where there is nothing to
    resume); None for any other error, and for bad input (already one line)."""
    found = None if isinstance(err, InputError) else find_disk_error(err)
    if found is None:
        return None
    fix = "free space" if found.full else "make it writable"
    then = f"then resume with `{resume}`" if resume else "then run it again"
    return StorageError("run_dir", f"{found.describe(run_dir)}; {fix}, {then}")


def check_free_space(run_dir: str | os.PathLike, need: int, what: str) -> None:
    """Refuse ``what`` (a stage) when ``run_dir`` has less than ``need`` bytes free, naming the
    path and both sizes."""
    free = free_bytes(run_dir)
    if free is not None and free < need:
        raise StorageError("run_dir", f"{Path(run_dir).absolute()} has {format_bytes(free)} free but {what} needs "
                           f"about {format_bytes(need)}; free space or choose another run_dir")


class StorageGuard(tune.Callback):
    """Stops the experiment in ``run_dir`` as Ctrl-C does (Tune saves its state and stops the
    running trials, which a resume starts again) at the first trial that failed for lack of space
    or on a read-only filesystem, and records why in ``stopped`` for the runner to report.

    ``stopped`` is process-wide: a restored experiment's guard is not the object the runner made.
    """

    #: run directory -> the disk error that stopped its experiment
    stopped: ClassVar[dict[str, DiskError]] = {}

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def _check(self, trial) -> None:
        found = find_disk_error_in_text(trial_error_text(trial))
        if found is None or self.run_dir in type(self).stopped:
            return
        type(self).stopped[self.run_dir] = found
        signal.raise_signal(signal.SIGINT)  # Tune's own Ctrl-C handler ends its loop after this step

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)


class QuietDiskErrors(logging.Filter):
    """Drops the log records (with their tracebacks) of errors that a full disk or a read-only
    filesystem caused, and once such an error stopped the experiment in ``run_dir`` all of
    Tune's (its Ctrl-C notice, the trials left, its own resume hint): one line says it instead."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ray.tune") and self.run_dir in StorageGuard.stopped:
            return False
        error = record.exc_info[1] if record.exc_info else None
        with contextlib.suppress(Exception):  # a record whose message does not format: kept
            return find_disk_error(error) is None and find_disk_error_in_text(record.getMessage()) is None
        return True


@contextlib.contextmanager
def quiet_disk_errors(run_dir: str) -> Iterator[None]:
    """Within the block, the log handlers of Ray, MLflow and the root logger, and the trial
    logger's own warnings, drop what :class:`QuietDiskErrors` drops."""
    import mlflow  # noqa: F401 - configures the handler of MLflow's logger

    quiet = QuietDiskErrors(run_dir)
    handlers = [*logging.getLogger("ray").handlers, *logging.getLogger("mlflow").handlers,
                *logging.getLogger().handlers]
    filtered = [*handlers, trial_logger]
    for target in filtered:
        target.addFilter(quiet)
    try:
        yield
    finally:
        for target in filtered:
            target.removeFilter(quiet)
