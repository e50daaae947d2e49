"""Value checks shared by the sweep and compare configs: each raises a one-line
:class:`ConfigError` that starts with the key path, before anything runs; and the ``tracking``
section both configs share (:class:`TrackingSettings`)."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from pruning.errors import InputError
from pruning.recovery import RENAMED_KEYS, RecipeError, RecoveryRecipe

__all__ = [
    "ConfigError", "check_int", "check_number", "check_string", "check_choice", "check_mapping",
    "check_keys", "check_name", "make_absolute", "SQLITE_PREFIX", "sqlite_path", "default_tracking_uri",
    "resolve_tracking_uri",
    "recipe_from_section", "recipe_section", "to_plain", "TrackingSettings",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(InputError):
    """A sweep/compare config that cannot run; one line that starts with the key path."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


def check_int(key: str, value: Any, *, lo: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(key, f"must be >= {lo}, got {value!r}")
    return value


def check_number(key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    return value


def check_string(key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def check_choice(key: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(key, f"must be one of {', '.join(valid)}, got {value!r}")
    return value


def check_mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(key, f"keys must be strings, got {bad[0]!r}")
    return value


def check_keys(prefix: str, data: Mapping[str, Any], valid: Sequence[str],
               moved: Mapping[str, str] | None = None) -> None:
    """Refuse keys outside ``valid``; a key in ``moved`` is named with its new place."""
    for key in data:
        if moved and key in moved:
            raise ConfigError(f"{prefix}{key}", f"set {moved[key]} instead")
        if key not in valid:
            raise ConfigError(f"{prefix}{key}", f"unknown key; valid: {', '.join(valid)}")


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError("name", f"must be letters, digits, '_', '-' or '.', got {value!r}")
    return value


def make_absolute(value: str) -> str:
    return str(Path(value).expanduser().absolute())


SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other URI."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    """``sqlite:////abs/run_dir/mlflow.db``: absolute, because Tune moves trials' working dirs."""
    return f"{SQLITE_PREFIX}{Path(run_dir).absolute() / 'mlflow.db'}"


def resolve_tracking_uri(key: str, value: str) -> str:
    """Accept any MLflow URI except the file store; make relative sqlite paths absolute."""
    if value.startswith(SQLITE_PREFIX):
        path = value[len(SQLITE_PREFIX):]  # not sqlite_path: Path("") is "." and hides an empty path
        if not path or path == ":memory:":
            raise ConfigError(key, f"needs a database file, got {value!r}")
        return f"{SQLITE_PREFIX}{Path(path).expanduser().absolute()}"
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme in ("", "file"):
        raise ConfigError(
            key, f"MLflow 3 does not support the file store ({value!r}); use sqlite:////ABS/PATH/mlflow.db "
            "(the default) or a tracking server URL"
        )
    return value


# the run's own seed (sweep.seed, a compare cell's seed) replaces the recipe's: one seed per trial
_RECIPE_KEYS = tuple(f.name for f in fields(RecoveryRecipe) if f.name != "seed")


def recipe_from_section(data: Any, seed_key: str, key: str = "recipe") -> RecoveryRecipe:
    """The ``recipe:`` section (or another one with its keys, at the path ``key``) as a
    :class:`RecoveryRecipe` (missing keys: its defaults); ``seed_key`` names the setting that
    seeds recovery instead of ``<key>.seed``."""
    data = check_mapping(key, data)
    check_keys(f"{key}.", data, _RECIPE_KEYS, {"seed": seed_key, **RENAMED_KEYS})
    try:
        return RecoveryRecipe.from_dict(data)
    except RecipeError as err:
        raise ConfigError(f"{key}.{err.field}", err.reason) from None


def recipe_section(recipe: RecoveryRecipe) -> dict[str, Any]:
    """The resolved ``recipe:`` section (every key but the seed, which the run sets)."""
    return {k: v for k, v in recipe.to_dict().items() if k in _RECIPE_KEYS}


def to_plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, all the way down: YAML-able values."""
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class TrackingSettings:
    """MLflow: tracking ``uri`` (None: ``sqlite:////<run_dir>/mlflow.db``) and ``experiment``."""

    uri: str | None = None
    experiment: str = "prunesweep"

    def __post_init__(self) -> None:
        if self.uri is not None:
            resolve_tracking_uri("tracking.uri", check_string("tracking.uri", self.uri))
        check_string("tracking.experiment", self.experiment)

    @classmethod
    def from_dict(cls, data: Any) -> TrackingSettings:
        data = check_mapping("tracking", data)
        check_keys("tracking.", data, [f.name for f in fields(cls)])
        values = dict(data)
        if values.get("uri") is not None:
            values["uri"] = resolve_tracking_uri("tracking.uri", check_string("tracking.uri", values["uri"]))
        return cls(**values)
