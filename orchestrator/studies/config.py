"""The study configuration: frozen, validated dataclasses; YAML only at the edge.

A study is one YAML file (see ``studies/criteria_benchmark.yaml``, which lists every key with
its default): ``checkpoints`` x ``criteria`` x ``ratios`` x ``recipes`` x ``flops_reductions`` x
``seeds``, every combination one cell. :meth:`StudyConfig.from_dict` validates it: an unknown
key or a bad value anywhere raises a one-line :class:`ConfigError` naming its path (e.g.
``criteria[1].sampels: unknown key; valid: ...``) before anything runs. :meth:`StudyConfig.to_dict`
is the resolved config (every default filled in, paths absolute) that every run records and
that ``--resume`` reads back. ``task:`` / ``task_kwargs:`` name the task every checkpoint is
pruned for and compared on (its primary metric on the test split; none given: classification).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from orchestrator.experiment.checks import (
    ConfigError, check_choice, check_int, check_keys, check_mapping, check_name, check_number, check_string,
    TrackingSettings, default_tracking_uri, make_absolute, recipe_from_section, recipe_section, to_plain,
)
from orchestrator.experiment.data_settings import DataSettings
from orchestrator.experiment.model_settings import MODEL_KEYS, ModelSettings, model_source
from orchestrator.experiment.task_settings import TASK_KEYS, task_spec_from
from pruning.errors import InputError
from pruning.planning import RatioSourceError, create_ratio_source, list_ratio_sources
from pruning.planning.ratio_sources import ratio_source_options
from pruning.recovery import RecoveryRecipe
from pruning.structure import STRATEGIES

__all__ = [
    "RESOLVED_STUDY_FILE", "INTERVALS", "PAIRED_TESTS", "BaselineSettings", "CriterionSettings",
    "RatioSettings", "PruningSettings", "SignificanceSettings", "ExecutionSettings", "StudyConfig",
]

RESOLVED_STUDY_FILE = "study.yaml"
INTERVALS = ("t", "bootstrap")
PAIRED_TESTS = ("wilcoxon", "bootstrap")
#: labels name cells, MLflow runs and cache files
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _check_label(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ConfigError(key, f"must be letters, digits, '_', '-', '+' or '.', got {value!r}")
    return value


def _unique(key: str, labels: list[str]) -> None:
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
        _check_label("checkpoints.label", self.label)
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
        return cls(label=_check_label(f"{key}.label", label), checkpoint=checkpoint, model=model)

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
        object.__setattr__(self, "label", _check_label("criteria.label", self.label or self.name))

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
        object.__setattr__(self, "label", _check_label("ratios.label", self.label or self.name))

    def create(self):
        """The ratio source (:class:`~pruning.planning.RatioSource`)."""
        return create_ratio_source(self.name, **self.options)

    @classmethod
    def from_dict(cls, key: str, value: Any) -> RatioSettings:
        return _named_entry(cls, key, value, "ratios")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, **dict(self.options)}


@dataclass(frozen=True)
class PruningSettings:
    """What every cell's :class:`~pruning.planning.PruningConfig` shares."""

    strategy: str = "full"
    max_layer_ratio: float = 0.9
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self) -> None:
        check_choice("pruning.strategy", self.strategy, STRATEGIES)
        if not 0 < check_number("pruning.max_layer_ratio", self.max_layer_ratio) < 1:
            raise ConfigError("pruning.max_layer_ratio", f"must be in (0, 1), got {self.max_layer_ratio!r}")
        check_int("pruning.min_channels", self.min_channels, lo=1)
        check_int("pruning.round_to", self.round_to, lo=1)


@dataclass(frozen=True)
class SignificanceSettings:
    """How cells are summarised (see docs/studies.md): ``interval`` t or bootstrap at ``confidence``;
    each criterion paired with ``reference`` by ``paired_test``, and each recipe with
    ``reference_recipe`` (None: recipes are not compared); bootstraps draw ``bootstrap_samples``
    resamples seeded by ``seed``."""

    reference: str = "random"
    reference_recipe: str | None = None
    confidence: float = 0.95
    interval: str = "t"
    paired_test: str = "wilcoxon"
    bootstrap_samples: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_label("significance.reference", self.reference)
        if self.reference_recipe is not None:
            _check_label("significance.reference_recipe", self.reference_recipe)
        if not 0 < check_number("significance.confidence", self.confidence) < 1:
            raise ConfigError("significance.confidence", f"must be in (0, 1), got {self.confidence!r}")
        check_choice("significance.interval", self.interval, INTERVALS)
        check_choice("significance.paired_test", self.paired_test, PAIRED_TESTS)
        check_int("significance.bootstrap_samples", self.bootstrap_samples, lo=100)
        check_int("significance.seed", self.seed, lo=0)


@dataclass(frozen=True)
class ExecutionSettings:
    """How the cells run: ``concurrency`` at once with ``cpus_per_trial`` / ``gpus_per_trial``
    each. ``share_scores: false`` makes every cell score its channels itself (only to measure
    what the shared scores save). ``score_every_stage: true`` measures the calibration accuracy
    after every recovery stage; by default only after the last one (the compared metric is the
    test accuracy, and each stage scored is one more pass over the calibration images)."""

    concurrency: int = 2
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    share_scores: bool = True
    score_every_stage: bool = False

    def __post_init__(self) -> None:
        check_int("execution.concurrency", self.concurrency, lo=1)
        check_number("execution.cpus_per_trial", self.cpus_per_trial, positive=True)
        if check_number("execution.gpus_per_trial", self.gpus_per_trial) < 0:
            raise ConfigError("execution.gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial!r}")
        for key in ("share_scores", "score_every_stage"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"execution.{key}", f"must be true or false, got {getattr(self, key)!r}")


def _section(cls, key: str, data: Any):
    data = check_mapping(key, data)
    check_keys(f"{key}.", data, [f.name for f in fields(cls)])
    return cls(**data)


def _list(key: str, data: Any) -> list:
    if not isinstance(data, list) or not data:
        raise ConfigError(key, f"must be a non-empty list, got {data!r}")
    return data


_TOP_LEVEL = ("name", "checkpoints", "criteria", "ratios", "recipes", "flops_reductions", "seeds", "pruning", "data",
              "significance", "execution", "tracking", "run_dir", *TASK_KEYS)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study, resolved; the cells are the product of the six lists (:mod:`.cells`).
    ``task``: the :class:`~pruning.tasks.TaskSpec` the config names (None: classification)."""

    name: str
    checkpoints: tuple[BaselineSettings, ...]
    criteria: tuple[CriterionSettings, ...]
    flops_reductions: tuple[float, ...]
    run_dir: str
    ratios: tuple[RatioSettings, ...] = (RatioSettings("uniform"),)
    recipes: Mapping[str, RecoveryRecipe] = field(default_factory=lambda: {"default": RecoveryRecipe()})
    seeds: tuple[int, ...] = (0,)
    pruning: PruningSettings = field(default_factory=PruningSettings)
    data: DataSettings = field(default_factory=DataSettings)
    significance: SignificanceSettings = field(default_factory=SignificanceSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings(experiment="prunesweep-compare"))
    task: Any = None  # TaskSpec | None

    def __post_init__(self) -> None:
        check_name(self.name)
        check_string("run_dir", self.run_dir)
        for key in ("checkpoints", "criteria", "ratios"):
            items = getattr(self, key)
            if not items:
                raise ConfigError(key, "give at least one")
            _unique(key, [item.label for item in items])
        if not self.recipes:
            raise ConfigError("recipes", "name at least one recipe")
        for label, recipe in self.recipes.items():
            _check_label(f"recipes.{label}", label)
            if not isinstance(recipe, RecoveryRecipe):
                raise ConfigError(f"recipes.{label}", f"must be a RecoveryRecipe, got {type(recipe).__name__}")
        if not self.flops_reductions:
            raise ConfigError("flops_reductions", "give at least one FLOPs reduction")
        for r in self.flops_reductions:
            if not 0.0 < check_number("flops_reductions", r) < 1.0:
                raise ConfigError("flops_reductions", f"each must be in (0, 1), got {r!r}")
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        for s in self.seeds:
            check_int("seeds", s, lo=0)
        for key in ("flops_reductions", "seeds"):
            values = list(getattr(self, key))
            if len(set(values)) != len(values):
                raise ConfigError(key, f"must not repeat a value, got {values!r}")
        labels = [c.label for c in self.criteria]
        if "snpfi-prior" in labels:  # cells.SNPFI_PRIOR: the score key of SNPFI's layer sparsities
            raise ConfigError("criteria.label", "snpfi-prior is reserved; choose another label")
        if len(labels) > 1 and self.significance.reference not in labels:
            raise ConfigError("significance.reference", f"must be one of the criteria {', '.join(labels)}, "
                              f"got {self.significance.reference!r}")
        reference_recipe = self.significance.reference_recipe
        if reference_recipe is not None and reference_recipe not in self.recipes:
            raise ConfigError("significance.reference_recipe", f"must be one of the recipes {', '.join(self.recipes)}, "
                              f"got {reference_recipe!r}")
        for baseline in self.checkpoints:  # a checkpoint's dataset is checked when it is loaded
            if baseline.model is not None:
                self.data.check_dataset(baseline.model.dataset)
        task = self.task_spec.build()
        for criterion in self.criteria:  # e.g. per-class scores on a task without class labels
            try:
                criterion.create(seed=0).check_task(task)
            except InputError as err:
                raise ConfigError(f"criteria.{criterion.label}", str(err)) from None
        object.__setattr__(self, "recipes", dict(self.recipes))
        if self.tracking.uri is None:
            object.__setattr__(self, "tracking", replace(self.tracking, uri=default_tracking_uri(self.run_dir)))

    def ratios_need(self, inputs: str) -> bool:
        """Whether a ratio source reads ``inputs``: ``stats`` (activation statistics) or
        ``utilization`` (SNPFI's utilization curves, the SNPFI prior)."""
        return any(getattr(r.create(), f"needs_{inputs}") for r in self.ratios)

    @property
    def task_spec(self):
        """The :class:`~pruning.tasks.TaskSpec` the study runs: the configured one, else classification."""
        from pruning.tasks import TaskSpec

        return self.task if self.task is not None else TaskSpec()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri  # type: ignore[return-value]  (filled in __post_init__)

    @property
    def reference(self) -> str | None:
        """The reference criterion's label; None with a single criterion (nothing to pair)."""
        return self.significance.reference if len(self.criteria) > 1 else None

    @property
    def reference_recipe(self) -> str | None:
        """The recipe every other one is paired with; None where not set or with a single recipe."""
        return self.significance.reference_recipe if len(self.recipes) > 1 else None

    @classmethod
    def from_dict(cls, data: Any, *, default_name: str = "study") -> StudyConfig:
        data = check_mapping("", data)
        if "statistics" in data:  # the section's name before the statistical tests became "significance"
            raise ConfigError("statistics", "is now called significance: rename the section")
        check_keys("", data, _TOP_LEVEL)
        for key in ("checkpoints", "criteria", "flops_reductions"):
            if key not in data:
                raise ConfigError(key, "missing")
        name = check_name(data.get("name", default_name))
        run_dir = data.get("run_dir")
        run_dir = make_absolute(str(Path("runs") / "studies" / name) if run_dir is None else check_string("run_dir", run_dir))
        recipes = check_mapping("recipes", data.get("recipes", {"default": {}}))
        tracking = dict(check_mapping("tracking", data.get("tracking")))
        tracking.setdefault("experiment", "prunesweep-compare")
        return cls(
            name=name, run_dir=run_dir,
            checkpoints=tuple(BaselineSettings.from_dict(f"checkpoints[{i}]", v)
                              for i, v in enumerate(_list("checkpoints", data["checkpoints"]))),
            criteria=tuple(CriterionSettings.from_dict(f"criteria[{i}]", v)
                           for i, v in enumerate(_list("criteria", data["criteria"]))),
            ratios=tuple(RatioSettings.from_dict(f"ratios[{i}]", v)
                         for i, v in enumerate(_list("ratios", data.get("ratios", ["uniform"])))),
            recipes={_check_label(f"recipes.{k}", k): recipe_from_section(v, "seeds", key=f"recipes.{k}")
                     for k, v in recipes.items()},
            flops_reductions=tuple(_list("flops_reductions", data["flops_reductions"])),
            seeds=tuple(_list("seeds", data.get("seeds", [0]))),
            pruning=_section(PruningSettings, "pruning", data.get("pruning")),
            data=DataSettings.from_dict(data.get("data")),
            significance=_section(SignificanceSettings, "significance", data.get("significance")),
            execution=_section(ExecutionSettings, "execution", data.get("execution")),
            tracking=TrackingSettings.from_dict(tracking),
            task=task_spec_from(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (YAML/JSON-able), every default filled in."""
        return {
            "name": self.name,
            # only where given: a classification study's resolved config (and MLflow params) stay as they were
            **({"task": self.task.name, "task_kwargs": dict(self.task.kwargs)} if self.task is not None else {}),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "criteria": [c.to_dict() for c in self.criteria],
            "ratios": [r.to_dict() for r in self.ratios],
            "recipes": {label: recipe_section(recipe) for label, recipe in self.recipes.items()},
            "flops_reductions": list(self.flops_reductions),
            "seeds": list(self.seeds),
            "pruning": {f.name: getattr(self.pruning, f.name) for f in fields(self.pruning)},
            "data": self.data.to_dict(),
            "significance": {f.name: getattr(self.significance, f.name) for f in fields(self.significance)},
            "execution": {f.name: getattr(self.execution, f.name) for f in fields(self.execution)},
            "tracking": {"uri": self.tracking_uri, "experiment": self.tracking.experiment},
            "run_dir": self.run_dir,
        }

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
