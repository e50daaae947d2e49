"""The axes of a study's grid that are lists of labelled entries: its baselines (``checkpoints:``),
``criteria:`` and ``ratios:``, each entry a bare name or a mapping with ``name`` (or a checkpoint
path), its options and a ``label`` that names its cells, MLflow runs and cache files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from orchestrator.experiment.checks import (
    ConfigError, check_choice, check_keys, check_mapping, check_string, make_absolute, to_plain,
)
from orchestrator.experiment.model_settings import MODEL_KEYS, ModelSettings, model_source
from pruning.errors import InputError
from pruning.planning import RatioSourceError, create_ratio_source, list_ratio_sources
from pruning.planning.ratio_sources import ratio_source_options

__all__ = ["BaselineSettings", "CriterionSettings", "RatioSettings", "check_label", "check_unique"]

#: labels name cells, MLflow runs and cache files
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_label(key: str, value: Any) -> str:
    """``value`` if it is a label (:data:`_LABEL`), else a one-line :class:`ConfigError` at ``key``."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ConfigError(key, f"must be letters, digits, '_', '-', '+' or '.', got {value!r}")
    return value


def check_unique(key: str, labels: list[str]) -> None:
    """Refuse ``labels`` that repeat (the entries of one list need distinct labels)."""
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(key, f"labels must be unique, {', '.join(repeated)} repeats (set label:)")


def _entry(key: str, value: Any) -> dict[str, Any]:
    """A list entry given as a bare name or as a mapping with ``name``."""
    if isinstance(value, str):
        return {"name": value}
    entry = dict(check_mapping(key, value))
    if "name" not in entry:
        raise ConfigError(f"{key}.name", "missing")
    return entry


def _named_entry(cls, key: str, value: Any, section: str):
    """``cls(name=..., options=..., label=...)`` from a list entry of ``section``, its errors
    naming the list entry (``key``), not the section."""
    data = _entry(key, value)
    name, label = data.pop("name"), data.pop("label", "")
    try:
        return cls(name=name, options=data, label=label)
    except ConfigError as err:
        raise ConfigError(key + err.key[len(section):].replace(f".{name}.", "."), str(err)[len(err.key) + 2:]) from None


@dataclass(frozen=True)
class BaselineSettings:
    """One baseline: a checkpoint path or a :class:`ModelSettings`, named by ``label`` (default:
    the file's stem)."""

    label: str
    checkpoint: str | None = None
    model: ModelSettings | None = None

    def __post_init__(self) -> None:
        check_label("checkpoints.label", self.label)
        if (self.checkpoint is None) == (self.model is None):
            raise ConfigError("checkpoints", "each entry gives exactly one of a checkpoint path and model:")

    @property
    def source(self) -> str | ModelSettings:
        return self.checkpoint if self.checkpoint is not None else self.model  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, key: str, value: Any) -> BaselineSettings:
        if isinstance(value, str):
            value = {"checkpoint": value}
        data = dict(check_mapping(key, value))
        check_keys(f"{key}.", data, ["label", "checkpoint", *MODEL_KEYS])
        try:
            checkpoint, model = model_source(data)
        except ConfigError as err:
            raise ConfigError(f"{key}.{err.key}", str(err)[len(err.key) + 2:]) from None
        stem = Path(checkpoint or model.weights or model.name.replace(":", "-")).stem
        label = data.get("label", re.sub(r"[^A-Za-z0-9_.+-]", "-", stem).lstrip("._+-") or "baseline")
        return cls(label=check_label(f"{key}.label", label), checkpoint=checkpoint, model=model)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, **({"checkpoint": self.checkpoint} if self.model is None else self.model.to_dict())}


@dataclass(frozen=True)
class CriterionSettings:
    """A criterion with its options (each cell's seed is its ``seed``), named by ``label``."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        from pruning.criteria import criterion_class, list_criteria
        from pruning.registry import accepted_options

        check_choice("criteria.name", self.name, list_criteria())
        valid = [o for o in (accepted_options(criterion_class(self.name)) or []) if o != "seed"]
        check_keys(f"criteria.{self.name}.", self.options, valid)
        try:
            self.create(seed=0)
        except (ValueError, TypeError) as err:
            raise ConfigError("criteria", str(err).strip().splitlines()[0]) from None
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "label", check_label("criteria.label", self.label or self.name))

    def create(self, *, seed: int):
        from pruning.criteria import create_criterion

        return create_criterion(self.name, seed=seed, **self.options)

    @classmethod
    def from_dict(cls, key: str, value: Any) -> CriterionSettings:
        return _named_entry(cls, key, value, "criteria")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, **to_plain(dict(self.options))}


@dataclass(frozen=True)
class RatioSettings:
    """Where layer-wise ratios come from: a ratio source of ``pruning.planning``
    (:func:`~pruning.planning.create_ratio_source`) with its ``options``, named by ``label``.
    ``uniform``/``global``: the allocation; ``concentration`` (``alpha``, ``fusion``: ``minmax`` or
    ``rank``, ``temperature``) and ``snpfi`` (``tau``, ``budget``): layer-wise ratios fitted to the
    FLOPs target; ``schedule``: a ``{layer: ratio}`` JSON file (``path``) whose shape is scaled the
    same way. The options are resolved (defaults filled in, ``path`` absolute)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        check_choice("ratios.name", self.name, list_ratio_sources())
        check_keys(f"ratios.{self.name}.", self.options, ratio_source_options(self.name))
        options = dict(self.options)
        if "path" in options or "path" in ratio_source_options(self.name):
            path = make_absolute(check_string("ratios.path", options.get("path")))
            if not Path(path).is_file():
                raise ConfigError("ratios.path", f"file {path!r} does not exist")
            options["path"] = path
        try:
            source = create_ratio_source(self.name, **options)
        except RatioSourceError as err:
            raise ConfigError(f"ratios.{err.option}", err.reason) from None
        except InputError as err:  # an unreadable schedule file
            raise ConfigError("ratios", str(err)) from None
        if "flops_reduction" not in source.targets:
            raise ConfigError("ratios.name", f"{self.name!r} does not take a FLOPs target")
        object.__setattr__(self, "options", source.options())
        object.__setattr__(self, "label", check_label("ratios.label", self.label or self.name))

    def create(self):
        """The ratio source (:class:`~pruning.planning.RatioSource`)."""
        return create_ratio_source(self.name, **self.options)

    @classmethod
    def from_dict(cls, key: str, value: Any) -> RatioSettings:
        return _named_entry(cls, key, value, "ratios")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, **dict(self.options)}
