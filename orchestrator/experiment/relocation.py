"""A run directory read (and resumed) where it is now, not where it ran: a copy (``cp -r``, e.g.
off a cluster's head node) or a moved one (``mv``) uses its own database and checkpoints.

A run records absolute paths of the directory it ran in: its resolved config's ``run_dir`` and
default tracking URI (``sqlite:////RUN_DIR/mlflow.db``), the parent run's ``prunesweep.run_dir``
tag, the trials' checkpoint tags. :class:`RunDirMove` maps a path under the recorded run
directory to the same relative path under the actual one, and leaves any other path or URI (a
database elsewhere, a tracking server) as recorded."""
from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from orchestrator.experiment.checks import SQLITE_PREFIX, ConfigError, sqlite_path
from orchestrator.experiment.config_file import read_config_file

__all__ = ["ARTIFACTS_FOLDER", "RunDirMove", "load_recorded_config", "recorded_run_dir", "move_artifact_locations"]

#: where a run directory's own (SQLite) MLflow store keeps its artifacts
ARTIFACTS_FOLDER = "mlartifacts"
#: the columns of MLflow's tables that hold an artifact location
_ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


@dataclass(frozen=True)
class RunDirMove:
    """A run directory that ran at ``recorded`` and is now at ``actual`` (absolute paths, equal
    where it has not moved)."""

    recorded: str
    actual: str

    def path(self, value: str | None) -> str | None:
        """``value`` under ``recorded`` as the same relative path under ``actual``; others unchanged."""
        if not value:
            return value
        try:
            relative = Path(value).relative_to(self.recorded)
        except ValueError:
            return value
        return str(Path(self.actual, relative))

    def recorded_path(self, value: str | None) -> str | None:
        """``value`` under ``actual`` as the same relative path under ``recorded`` (what
        :meth:`path` maps back): what the run records stays relative to where it started."""
        return RunDirMove(self.actual, self.recorded).path(value)

    def tracking_uri(self, uri: str) -> str:
        """A ``sqlite:///`` database under ``recorded`` found under ``actual``; others unchanged."""
        path = sqlite_path(uri)
        return uri if path is None else SQLITE_PREFIX + str(self.path(str(path)))

    def config(self, config: Any) -> Any:
        """A recorded sweep or study ``config`` (``run_dir``, ``tracking``) as it is at ``actual``."""
        if self.recorded == self.actual:
            return config
        tracking = replace(config.tracking, uri=self.tracking_uri(config.tracking_uri))
        return replace(config, run_dir=self.actual, tracking=tracking)


def load_recorded_config(run_dir: str | os.PathLike, config_file: str,
                         load: Callable[[Path], Any]) -> tuple[Any, RunDirMove]:
    """The config recorded in ``RUN_DIR/config_file`` (read with ``load``), as it is in ``run_dir``
    now, and the move from where it ran. A file that no longer loads (emptied, cut short, edited)
    is a one-line :class:`ConfigError` naming it."""
    path = Path(run_dir).absolute() / config_file
    try:
        recorded = load(path)
    except ConfigError as err:
        if str(path) in str(err):
            raise
        raise ConfigError(str(path), f"not a usable recorded config: {err}") from None
    move = RunDirMove(recorded.run_dir, str(path.parent))
    return move.config(recorded), move


def recorded_run_dir(run_dir: str | os.PathLike, config_file: str) -> str | None:
    """The run directory the config recorded in ``RUN_DIR/config_file`` names: where the run
    started (its MLflow parent run is tagged with it); None where there is no such file."""
    path = Path(run_dir) / config_file
    if not path.is_file():
        return None
    value = read_config_file(path).get("run_dir")
    return str(value) if value else None


def move_artifact_locations(uri: str, move: RunDirMove) -> None:
    """Point the artifact locations of a run directory's own database (``uri``: a SQLite file
    inside ``move.actual``) at its ``mlartifacts`` folder where it is now, so that what a resumed
    copy logs stays in it rather than in the run directory it was copied from. A store elsewhere
    (a server, a shared database) is left as it is."""
    path = sqlite_path(uri)
    if path is None or not path.is_file() or not path.absolute().is_relative_to(move.actual):
        return
    new = (Path(move.actual) / ARTIFACTS_FOLDER).as_uri()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for (old,) in db.execute("SELECT DISTINCT artifact_location FROM experiments").fetchall():
            if not old or old == new or not old.endswith(f"/{ARTIFACTS_FOLDER}"):
                continue
            for table, column in _ARTIFACT_COLUMNS:
                db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                           f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                           (new, len(old) + 1, old, len(old) + 1, f"{old}/"))
        moved = db.total_changes > 0
    if moved:  # MLflow keeps each run's artifact store per process, by run id: the copy's runs have the original's ids
        from mlflow.tracking._tracking_service import utils

        utils._artifact_repos_cache.clear()
