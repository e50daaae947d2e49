"""The sweep configuration: frozen, validated dataclasses; YAML only at the edge.

A sweep config is one YAML file (see ``search_spaces/resnet20_fmnist.yaml``)::

    name: resnet20-fmnist            # optional; default: the file's stem
    checkpoint: runs/resnet20.pt     # the unpruned baseline (`prunesweep train`)
    data:     {calibration_images: 512, finetune_subset: null, bn_batches: 20, batch_size: 128,
               data_root: null, test_subset: null}
    space:    {name: concentration, strategy: full, <the space's options>}
    sweep:    {trials: 8, concurrency: 2, sampler: nsga2, objectives: {accuracy: max, macs: min},
               seed: 0, cpus_per_trial: 1, population_size: null}
    tracking: {uri: null, experiment: prunesweep}
    run_dir:  null                   # default: runs/sweeps/<name>

:func:`load_sweep_config` reads it, :meth:`SweepConfig.from_dict` validates it: an unknown key or
an out-of-range value anywhere raises a one-line :class:`ConfigError` naming the key path (e.g.
``sweep.trails: unknown key; valid: trials, concurrency, ...``), before anything runs. The
resolved config (:meth:`SweepConfig.to_dict`) has every default filled in, relative paths made
absolute (against the current directory) and the space's own option defaults listed; loading it
again gives the same config, which is how ``prunesweep sweep --resume`` reads a sweep back.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pruning.registry import accepted_options
from pruning.errors import InputError

__all__ = [
    "ConfigError",
    "DataSettings",
    "SpaceSettings",
    "SweepSettings",
    "TrackingSettings",
    "SweepConfig",
    "CompareConfig",
    "SAMPLERS",
    "OBJECTIVES",
    "STRATEGIES",
    "load_sweep_config",
    "dump_sweep_config",
    "flatten",
    "default_tracking_uri",
]

#: Optuna samplers a sweep may use
SAMPLERS = ("nsga2", "tpe", "gp", "random")
#: metrics a sweep may optimise, each with the only direction that makes sense for it
OBJECTIVES = {"accuracy": "max", "macs": "min", "params": "min", "latency_ms": "min"}
STRATEGIES = ("full", "inner")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESOLVED_CONFIG_FILE = "sweep.yaml"


class ConfigError(InputError):
    """A sweep/compare config that cannot run; one line that starts with the key path."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


# ---------------------------------------------------------------------------------------------
# value checks (each raises ConfigError naming the key)


def _int(key: str, value: Any, *, lo: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(key, f"must be >= {lo}, got {value!r}")
    return value


def _number(key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    return value


def _string(key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def _choice(key: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(key, f"must be one of {', '.join(valid)}, got {value!r}")
    return value


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(key, f"keys must be strings, got {bad[0]!r}")
    return value


def _check_keys(prefix: str, data: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"{prefix}{key}", f"unknown key; valid: {', '.join(valid)}")


def _abs_path(value: str) -> str:
    return str(Path(value).expanduser().absolute())


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    """``sqlite:////abs/run_dir/mlflow.db``: absolute, because Tune moves trials' working dirs."""
    return f"sqlite:///{Path(run_dir).absolute() / 'mlflow.db'}"


def _tracking_uri(key: str, value: str) -> str:
    """Accept any MLflow URI except the file store; make relative sqlite paths absolute."""
    if value.startswith("sqlite:///"):
        path = value[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ConfigError(key, f"needs a database file, got {value!r}")
        return f"sqlite:///{Path(path).expanduser().absolute()}"
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme in ("", "file"):
        raise ConfigError(
            key, f"MLflow 3 does not support the file store ({value!r}); use sqlite:////ABS/PATH/mlflow.db "
            "(the default) or a tracking server URL"
        )
    return value


# ---------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class DataSettings:
    """Data for scoring, recovery and evaluation (the dataset itself is the checkpoint's).

    calibration_images: images of the calibration split used for statistics and data-driven
        criteria (the whole calibration split scores every trial's accuracy).
    finetune_subset: fine-tune on the first N training images only (None: all).
    bn_batches: training batches for adaptive-BN recalibration after pruning (0: off).
    batch_size: for scoring, recalibration and fine-tuning.
    data_root: dataset folder (None: the checkpoint's / the dataset's default).
    test_subset: test images for the Pareto set's test accuracy (None: the checkpoint's).
    """

    calibration_images: int = 512
    finetune_subset: int | None = None
    bn_batches: int = 20
    batch_size: int = 128
    data_root: str | None = None
    test_subset: int | None = None

    def __post_init__(self) -> None:
        _int("data.calibration_images", self.calibration_images, lo=1)
        _int("data.finetune_subset", self.finetune_subset, lo=1, optional=True)
        _int("data.bn_batches", self.bn_batches, lo=0)
        _int("data.batch_size", self.batch_size, lo=1)
        _string("data.data_root", self.data_root, optional=True)
        _int("data.test_subset", self.test_subset, lo=1, optional=True)

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "data.") -> DataSettings:
        data = _mapping(prefix.rstrip("."), data)
        _check_keys(prefix, data, [f.name for f in fields(cls)])
        values = dict(data)
        if values.get("data_root") is not None:
            values["data_root"] = _abs_path(_string(prefix + "data_root", values["data_root"]))
        return cls(**values)


@dataclass(frozen=True)
class SpaceSettings:
    """The search space: a registered name, the pruning strategy and the space's options."""

    name: str
    strategy: str = "full"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from search_spaces import list_search_spaces, search_space_class

        _choice("space.name", self.name, list_search_spaces())
        _choice("space.strategy", self.strategy, STRATEGIES)
        cls = search_space_class(self.name)
        valid = accepted_options(cls) or []
        _check_keys("space.", self.options, ["name", "strategy", *valid])
        try:
            self.create()
        except (ValueError, TypeError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            option = next((o for o in sorted(self.options, key=len, reverse=True) if message.startswith(o)), None)
            if option is None:
                raise ConfigError("space", message) from None
            raise ConfigError(f"space.{option}", message[len(option):].lstrip(" :")) from None
        # resolved: every option of the space with its (validated) value, defaults included
        object.__setattr__(self, "options", self.resolved_options())

    def create(self):
        """A fresh :class:`~search_spaces.SearchSpace` with these options."""
        from search_spaces import create_search_space

        return create_search_space(self.name, **self.options)

    def resolved_options(self) -> dict[str, Any]:
        """Every option of the space, defaults included, as plain YAML values."""
        return {k: _plain(v) for k, v in self.create().options().items()}

    @classmethod
    def from_dict(cls, data: Any) -> SpaceSettings:
        data = dict(_mapping("space", data))
        if "name" not in data:
            from search_spaces import list_search_spaces

            raise ConfigError("space.name", f"missing; valid: {', '.join(list_search_spaces())}")
        name = data.pop("name")
        strategy = data.pop("strategy", "full")
        from search_spaces import list_search_spaces

        _choice("space.name", name, list_search_spaces())
        return cls(name=name, strategy=strategy, options=data)


@dataclass(frozen=True)
class SweepSettings:
    """How the search runs.

    trials: number of trials (Tune ``num_samples``). concurrency: trials at once.
    sampler: Optuna sampler (``nsga2``, ``tpe``, ``gp``, ``random``).
    objectives: metric -> direction; from accuracy (max), macs, params, latency_ms (min).
    seed: sampler seed, and the seed of every trial's criterion, loaders and fine-tuning.
    cpus_per_trial: Ray CPUs reserved per trial (also its torch thread count).
    population_size: NSGA-II population (None: trials // 2, clipped to [2, 50]).
    """

    trials: int = 8
    concurrency: int = 2
    sampler: str = "nsga2"
    objectives: Mapping[str, str] = field(default_factory=lambda: {"accuracy": "max", "macs": "min"})
    seed: int = 0
    cpus_per_trial: float = 1
    population_size: int | None = None

    def __post_init__(self) -> None:
        _int("sweep.trials", self.trials, lo=1)
        _int("sweep.concurrency", self.concurrency, lo=1)
        _choice("sweep.sampler", self.sampler, SAMPLERS)
        objectives = _mapping("sweep.objectives", self.objectives)
        if not objectives:
            raise ConfigError("sweep.objectives", f"name at least one of {', '.join(OBJECTIVES)}")
        _check_keys("sweep.objectives.", objectives, list(OBJECTIVES))
        for metric, direction in objectives.items():
            if direction != OBJECTIVES[metric]:
                better = "higher" if OBJECTIVES[metric] == "max" else "lower"
                raise ConfigError(
                    f"sweep.objectives.{metric}",
                    f"must be {OBJECTIVES[metric]!r} ({better} is better), got {direction!r}",
                )
        _int("sweep.seed", self.seed, lo=0)
        _number("sweep.cpus_per_trial", self.cpus_per_trial, positive=True)
        _int("sweep.population_size", self.population_size, lo=2, optional=True)
        if self.population_size is not None and self.sampler != "nsga2":
            raise ConfigError("sweep.population_size", f"applies to sampler nsga2 only, not {self.sampler!r}")
        object.__setattr__(self, "objectives", dict(objectives))
        if self.population_size is None and self.sampler == "nsga2":
            object.__setattr__(self, "population_size", max(2, min(50, self.trials // 2)))

    @classmethod
    def from_dict(cls, data: Any) -> SweepSettings:
        data = _mapping("sweep", data)
        _check_keys("sweep.", data, [f.name for f in fields(cls)])
        values = dict(data)
        if "objectives" in values:
            values["objectives"] = dict(_mapping("sweep.objectives", values["objectives"]))
        return cls(**values)


@dataclass(frozen=True)
class TrackingSettings:
    """MLflow: tracking ``uri`` (None: ``sqlite:////<run_dir>/mlflow.db``) and ``experiment``."""

    uri: str | None = None
    experiment: str = "prunesweep"

    def __post_init__(self) -> None:
        if self.uri is not None:
            _tracking_uri("tracking.uri", _string("tracking.uri", self.uri))
        _string("tracking.experiment", self.experiment)

    @classmethod
    def from_dict(cls, data: Any) -> TrackingSettings:
        data = _mapping("tracking", data)
        _check_keys("tracking.", data, [f.name for f in fields(cls)])
        values = dict(data)
        if values.get("uri") is not None:
            values["uri"] = _tracking_uri("tracking.uri", _string("tracking.uri", values["uri"]))
        return cls(**values)


_TOP_LEVEL = ("name", "checkpoint", "data", "space", "sweep", "tracking", "run_dir")


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep, resolved: absolute ``checkpoint`` and ``run_dir``, a concrete tracking URI."""

    name: str
    checkpoint: str
    space: SpaceSettings
    run_dir: str
    data: DataSettings = field(default_factory=DataSettings)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError("name", f"must be letters, digits, '_', '-' or '.', got {self.name!r}")
        _string("checkpoint", self.checkpoint)
        _string("run_dir", self.run_dir)
        if self.tracking.uri is None:
            object.__setattr__(self, "tracking", replace(self.tracking, uri=default_tracking_uri(self.run_dir)))

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri  # type: ignore[return-value]  (filled in __post_init__)

    @property
    def objectives(self) -> dict[str, str]:
        return dict(self.sweep.objectives)

    @classmethod
    def from_dict(cls, data: Any, *, default_name: str = "sweep") -> SweepConfig:
        data = _mapping("", data)
        _check_keys("", data, _TOP_LEVEL)
        if "checkpoint" not in data:
            raise ConfigError("checkpoint", "missing: the path of the unpruned baseline checkpoint")
        if "space" not in data:
            raise ConfigError("space", "missing: a mapping with the search space's name and options")
        name = data.get("name", default_name)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError("name", f"must be letters, digits, '_', '-' or '.', got {name!r}")
        run_dir = data.get("run_dir")
        run_dir = _abs_path(str(Path("runs") / "sweeps" / name) if run_dir is None else _string("run_dir", run_dir))
        return cls(
            name=name,
            checkpoint=_abs_path(_string("checkpoint", data["checkpoint"])),
            space=SpaceSettings.from_dict(data["space"]),
            run_dir=run_dir,
            data=DataSettings.from_dict(data.get("data")),
            sweep=SweepSettings.from_dict(data.get("sweep")),
            tracking=TrackingSettings.from_dict(data.get("tracking")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (YAML/JSON-able), every default filled in."""
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "data": {f.name: getattr(self.data, f.name) for f in fields(self.data)},
            "space": {"name": self.space.name, "strategy": self.space.strategy, **_plain(self.space.options)},
            "sweep": {
                "trials": self.sweep.trials,
                "concurrency": self.sweep.concurrency,
                "sampler": self.sweep.sampler,
                "objectives": dict(self.sweep.objectives),
                "seed": self.sweep.seed,
                "cpus_per_trial": self.sweep.cpus_per_trial,
                "population_size": self.sweep.population_size,
            },
            "tracking": {"uri": self.tracking_uri, "experiment": self.tracking.experiment},
            "run_dir": self.run_dir,
        }

    def to_yaml(self) -> str:
        return dump_sweep_config(self)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


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


def load_sweep_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """Read a YAML sweep config; ``overrides`` maps dotted keys (``sweep.trials``) to values.

    The default sweep name is the file's stem. Raises :class:`ConfigError` (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
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
    return SweepConfig.from_dict(data, default_name=_default_name(path))


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).lstrip("._-")
    return stem or "sweep"


def dump_sweep_config(config: SweepConfig) -> str:
    """The resolved config as YAML (what every run records)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values): MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------
# compare: a criterion x FLOPs-target x seed grid (no search)


@dataclass(frozen=True)
class CompareConfig:
    """``prunesweep compare``: every criterion at every FLOPs target with every seed.

    Each cell prunes with ``uniform`` allocation to the target, recalibrates BN, fine-tunes
    ``finetune_epochs`` and reports calibration and test accuracy (no selection happens on the
    test split: the grid is fixed in advance).
    """

    checkpoint: str
    criteria: tuple[str, ...]
    flops_reductions: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    run_dir: str = ""
    strategy: str = "full"
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4
    data: DataSettings = field(default_factory=DataSettings)
    concurrency: int = 2
    cpus_per_trial: float = 1
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings(experiment="prunesweep-compare"))
    name: str = "compare"

    def __post_init__(self) -> None:
        from pruning.criteria import list_criteria

        _string("checkpoint", self.checkpoint)
        if not self.criteria:
            raise ConfigError("criteria", "name at least one criterion")
        for c in self.criteria:
            _choice("criteria", c, list_criteria())
        if len(set(self.criteria)) != len(self.criteria):
            raise ConfigError("criteria", f"must not repeat a name, got {list(self.criteria)!r}")
        if not self.flops_reductions:
            raise ConfigError("flops_reductions", "give at least one FLOPs reduction")
        for r in self.flops_reductions:
            _number("flops_reductions", r)
            if not 0.0 < r < 1.0:
                raise ConfigError("flops_reductions", f"each must be in (0, 1), got {r!r}")
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        for s in self.seeds:
            _int("seeds", s, lo=0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must not repeat a seed, got {list(self.seeds)!r}")
        _choice("strategy", self.strategy, STRATEGIES)
        _int("finetune_epochs", self.finetune_epochs, lo=0)
        _number("finetune_lr", self.finetune_lr, positive=True)
        _number("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _int("concurrency", self.concurrency, lo=1)
        _number("cpus_per_trial", self.cpus_per_trial, positive=True)
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError("name", f"must be letters, digits, '_', '-' or '.', got {self.name!r}")
        if not self.run_dir:
            object.__setattr__(self, "run_dir", _abs_path(str(Path("runs") / "compare" / self.name)))
        if self.tracking.uri is None:
            object.__setattr__(self, "tracking", replace(self.tracking, uri=default_tracking_uri(self.run_dir)))

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri  # type: ignore[return-value]

    @property
    def trials(self) -> int:
        return len(self.criteria) * len(self.flops_reductions) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "criteria": list(self.criteria),
            "flops_reductions": list(self.flops_reductions),
            "seeds": list(self.seeds),
            "strategy": self.strategy,
            "finetune_epochs": self.finetune_epochs,
            "finetune_lr": self.finetune_lr,
            "weight_decay": self.weight_decay,
            "data": {f.name: getattr(self.data, f.name) for f in fields(self.data)},
            "concurrency": self.concurrency,
            "cpus_per_trial": self.cpus_per_trial,
            "tracking": {"uri": self.tracking_uri, "experiment": self.tracking.experiment},
            "run_dir": self.run_dir,
        }
