"""The study configuration: frozen, validated dataclasses; YAML only at the edge.

A study is one YAML file (see ``studies/criteria_benchmark.yaml``, which lists every key with
its default): ``checkpoints`` x ``criteria`` x ``ratios`` x ``recipes`` x ``flops_reductions`` x
``seeds``, every combination one cell. :meth:`StudyConfig.from_dict` validates it: an unknown
key or a bad value anywhere raises a one-line :class:`ConfigError` naming its path (e.g.
``criteria[1].sampels: unknown key; valid: ...``) before anything runs. :meth:`StudyConfig.to_dict`
is the resolved config (every default filled in, paths absolute) that every run records and
that ``--resume`` reads back. ``task:`` / ``task_kwargs:`` name the task every checkpoint is
pruned for and compared on (its primary metric on the test split; none given: classification).
The grid's labelled list entries (baselines, criteria, ratio sources) are :mod:`orchestrator.studies.axes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from orchestrator.experiment.checks import (
    ConfigError, check_choice, check_int, check_keys, check_mapping, check_name, check_number, check_string,
    TrackingSettings, default_tracking_uri, make_absolute, recipe_from_section, recipe_section,
)
from orchestrator.experiment.data_settings import DataSettings
from orchestrator.experiment.task_settings import TASK_KEYS, task_spec_from
from orchestrator.studies.axes import BaselineSettings, CriterionSettings, RatioSettings, check_label, check_unique
from pruning.errors import InputError
from pruning.recovery import RecoveryRecipe
from pruning.structure import STRATEGIES

__all__ = [
    "RESOLVED_STUDY_FILE", "INTERVALS", "PAIRED_TESTS", "PruningSettings", "SignificanceSettings",
    "ExecutionSettings", "StudyConfig",
]

RESOLVED_STUDY_FILE = "study.yaml"
INTERVALS = ("t", "bootstrap")
PAIRED_TESTS = ("wilcoxon", "bootstrap")


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
        check_label("significance.reference", self.reference)
        if self.reference_recipe is not None:
            check_label("significance.reference_recipe", self.reference_recipe)
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
            check_unique(key, [item.label for item in items])
        if not self.recipes:
            raise ConfigError("recipes", "name at least one recipe")
        for label, recipe in self.recipes.items():
            check_label(f"recipes.{label}", label)
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
            recipes={check_label(f"recipes.{k}", k): recipe_from_section(v, "seeds", key=f"recipes.{k}")
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
