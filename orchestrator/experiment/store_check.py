"""A local MLflow database checked before MLflow opens it: MLflow creates its tables in an empty
or foreign SQLite file (a write, which a command that only reads must not make), and a corrupt
or older one fails deep inside SQLAlchemy or Alembic. The check opens the file read-only and
changes nothing."""
from __future__ import annotations

import contextlib
import importlib
import sqlite3

from orchestrator.experiment.checks import SQLITE_PREFIX, ConfigError, sqlite_path

__all__ = ["check_mlflow_database"]


def _mlflow_schema() -> tuple[set[str], str]:
    """The tables MLflow looks for when it opens a database (it creates them where one is
    missing) and the schema revision it expects (it refuses any other)."""
    from mlflow.store.db.base_sql_model import Base

    utils = importlib.import_module("mlflow.store.db.utils")  # also registers MLflow's tables with Base
    return set(Base.metadata.tables), utils._get_latest_schema_revision()


def check_mlflow_database(uri: str, key: str = "tracking_uri") -> None:
    """Refuse, in one line naming the file under ``key``, a ``sqlite:///`` URI whose file is
    missing, empty, not a SQLite database, corrupt, or not an MLflow database of this MLflow's
    schema; other URIs pass."""
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.is_file():
        raise ConfigError(key, f"no MLflow database at {path}")
    if path.stat().st_size == 0:
        raise ConfigError(key, f"{path} is empty (0 bytes), not an MLflow database")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            integrity = [row[0] for row in db.execute("PRAGMA quick_check")]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revisions = (db.execute("SELECT version_num FROM alembic_version").fetchall()
                         if "alembic_version" in tables else [])
    except sqlite3.DatabaseError as err:
        raise ConfigError(key, f"{path} is not a readable SQLite database ({err})") from None
    if integrity != ["ok"]:
        raise ConfigError(key, f"{path} is a corrupt SQLite database ({integrity[0]})")
    expected_tables, expected_revision = _mlflow_schema()
    missing = sorted(expected_tables - tables)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ConfigError(key, f"{path} is not an MLflow database (no table {shown})")
    revision = revisions[0][0] if revisions else None
    if revision != expected_revision:
        raise ConfigError(key, f"{path} has MLflow schema {revision}, not this MLflow's {expected_revision}: "
                               f"back it up and upgrade it with `mlflow db upgrade {SQLITE_PREFIX}{path}`")
