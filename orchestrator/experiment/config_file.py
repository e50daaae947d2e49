"""Reading a config file (a sweep's or a study's): YAML parsing, ``--trials``-style dotted
overrides, the default name (the file's stem); validation is the config class's ``from_dict``."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from orchestrator.experiment.checks import ConfigError

__all__ = ["read_config_file", "default_name"]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(part, f"must be a mapping, got {child!r}")
        node = child
    node[leaf] = value


def read_config_file(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The YAML mapping in ``path`` with ``overrides`` (dotted keys -> values; None: not set)
    applied. Raises :class:`ConfigError` (one line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError("config", f"{str(path)!r} is not a text file") from None
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError("config", f"{str(path)!r} is not valid YAML ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{str(path)!r} must hold a mapping, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return data


def default_name(path: str | os.PathLike, fallback: str) -> str:
    """A config's default name: its file's stem, reduced to the characters a name may hold."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem).lstrip("._-")
    return stem or fallback
