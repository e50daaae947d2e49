"""The sweep configuration: frozen, validated dataclasses; YAML only at the edge.

A sweep config is one YAML file (see ``search_spaces/resnet20_fmnist.yaml``)::

    name: resnet20-fmnist            # optional; default: the file's stem
    checkpoint: runs/resnet20.pt     # the unpruned baseline (`prunesweep train`), or instead:
    # model: torchvision:resnet18    # a registered name, torchvision:/timm:<name>, package.module:factory
    # weights: my_weights.pt         # its state_dict (torch.save(model.state_dict(), path))
    # model_kwargs: {}               # the factory's keyword options
    # dataset: fashion-mnist         # what it was trained on (a checkpoint records its own)
    # task: segmentation             # what it is pruned for (classification, segmentation,
    # task_kwargs: {}                # package.module:factory) and the task's options
    data:     {calibration_images: 512, batch_size: 128, data_root: null, test_subset: null,
               image_size: null}     # image_size: imagefolder only (null: the checkpoint's, else 224)
    recipe:   {reconstruct: true, bn_batches: 20, finetune_subset: null, ...}  # RecoveryRecipe
    space:    {name: concentration, strategy: full, <the space's options>}
    sweep:    {trials: 8, concurrency: 2, sampler: nsga2, objectives: {accuracy: max, macs: min},  # the task's
               seed: 0, cpus_per_trial: 1, gpus_per_trial: 0, gpus_per_worker: 0,
               population_size: null, warm_start: true,
               refine: {candidates: 0, recipe: {finetune_epochs: 1, distill: 0.5}, concurrency: null},
               latency: {runtime: onnxruntime, device: cpu, batch: 1, threads: 1}}  # with latency_ms only
    tracking: {uri: null, experiment: prunesweep}
    run_dir:  null                   # default: runs/sweeps/<name>

:func:`load_sweep_config` reads it, :meth:`SweepConfig.from_dict` validates it: an unknown key or
an out-of-range value anywhere raises a one-line :class:`ConfigError` naming the key path (e.g.
``sweep.trails: unknown key; valid: trials, concurrency, ...``), before anything runs. The
resolved config (:meth:`SweepConfig.to_dict`) has every default filled in, relative paths made
absolute (against the current directory) and the space's own option defaults listed; loading it
again gives the same config, which is how ``prunesweep sweep --resume`` reads a sweep back.

``sweep.objectives`` name the task's metrics (:mod:`orchestrator.sweeps.objectives`), checked
against ``task:`` (none given: classification, the task of a checkpoint that records none; a
checkpoint recorded for another task needs its ``task:`` named).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from orchestrator.experiment.checks import (
    ConfigError,
    TrackingSettings,
    check_choice,
    check_int,
    check_keys,
    check_mapping,
    check_name,
    check_number,
    check_string,
    default_tracking_uri,
    make_absolute,
    recipe_from_section,
    recipe_section,
    to_plain,
)
from orchestrator.experiment.config_file import default_name, read_config_file
from orchestrator.experiment.data_settings import DataSettings
from orchestrator.experiment.model_settings import MODEL_KEYS, ModelSettings, check_one_source, model_source
from orchestrator.experiment.task_settings import TASK_KEYS, task_spec_from
from orchestrator.sweeps.latency import LatencySettings
from orchestrator.sweeps.objectives import COSTS, check_objectives
from orchestrator.sweeps.refine import RefineSettings, refine_recipe
from pruning.errors import first_line
from pruning.recovery import RecoveryRecipe
from pruning.registry import accepted_options
from pruning.structure import STRATEGIES

__all__ = [
    "DataSettings",
    "ModelSettings",
    "SpaceSettings",
    "SweepSettings",
    "TrackingSettings",
    "SweepConfig",
    "SAMPLERS",
    "OBJECTIVES",
    "RESOLVED_CONFIG_FILE",
    "dump_sweep_config",
    "load_sweep_config",
]

#: the Optuna samplers a sweep may use: config name -> class in ``optuna.samplers``
SAMPLERS = {"nsga2": "NSGAIISampler", "tpe": "TPESampler", "gp": "GPSampler", "random": "RandomSampler"}
#: metrics a classification sweep may optimise, each with the only direction that makes sense
#: for it (another task's: :func:`orchestrator.sweeps.objectives.metric_directions`)
OBJECTIVES = {"accuracy": "max", **COSTS}
RESOLVED_CONFIG_FILE = "sweep.yaml"
#: sweep keys left out of the resolved config while 0
_GPU_KEYS = ("gpus_per_trial", "gpus_per_worker")
@dataclass(frozen=True)
class SpaceSettings:
    """The search space: a registered name, the pruning strategy and the space's options."""

    name: str
    strategy: str = "full"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from search_spaces import list_search_spaces, search_space_class

        check_choice("space.name", self.name, list_search_spaces())
        check_choice("space.strategy", self.strategy, STRATEGIES)
        valid = accepted_options(search_space_class(self.name)) or []
        check_keys("space.", self.options, ["name", "strategy", *valid])
        try:
            space = self.create()
        except (ValueError, TypeError) as err:
            message = first_line(err)
            option = next((o for o in sorted(self.options, key=len, reverse=True) if message.startswith(o)), None)
            if option is None:
                raise ConfigError("space", message) from None
            raise ConfigError(f"space.{option}", message[len(option):].lstrip(" :")) from None
        # resolved: every option of the space with its (validated) value, defaults included
        object.__setattr__(self, "options", {k: to_plain(v) for k, v in space.options().items()})

    def create(self):
        """A fresh :class:`~search_spaces.SearchSpace` with these options."""
        from search_spaces import create_search_space

        return create_search_space(self.name, **self.options)

    @classmethod
    def from_dict(cls, data: Any) -> SpaceSettings:
        from search_spaces import list_search_spaces

        data = dict(check_mapping("space", data))
        if "name" not in data:
            raise ConfigError("space.name", f"missing; valid: {', '.join(list_search_spaces())}")
        name = check_choice("space.name", data.pop("name"), list_search_spaces())
        return cls(name=name, strategy=data.pop("strategy", "full"), options=data)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strategy": self.strategy, **to_plain(self.options)}


@dataclass(frozen=True)
class SweepSettings:
    """How the search runs.

    trials: number of trials (Tune ``num_samples``). concurrency: trials at once.
    sampler: Optuna sampler (a key of :data:`SAMPLERS`).
    objectives: metric -> direction; from the task's metrics (classification: accuracy, max) and
        macs, params, latency_ms (min); None: the task's primary metric and macs (filled in and
        checked against the task by :class:`SweepConfig`).
    seed: sampler seed, and the seed of every trial's criterion and recovery recipe.
    cpus_per_trial: Ray CPUs reserved per trial (also its torch thread count).
    gpus_per_trial: Ray GPUs reserved per trial (fractions share a GPU; 0: CPU only); a trial
        given a GPU runs its model there.
    gpus_per_worker: Ray GPUs reserved by each statistics actor of the baseline (0: CPU only).
    (The resolved config lists the two GPU keys only where they are > 0.)
    population_size: NSGA-II population (None: trials // 2, clipped to [2, 50]).
    warm_start: the first trials are ``SearchSpace.warm_starts`` (counted in ``trials``).
    refine: the refinement stage (``candidates: 0``: none); ``trials`` are then the screening ones.
    latency: where the ``latency_ms`` objective is measured (:class:`LatencySettings`; default:
        onnxruntime on the CPU, batch 1, one thread); set only with that objective.
    """

    trials: int = 8
    concurrency: int = 2
    sampler: str = "nsga2"
    objectives: Mapping[str, str] | None = None
    seed: int = 0
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    gpus_per_worker: float = 0
    population_size: int | None = None
    warm_start: bool = True
    refine: RefineSettings = field(default_factory=RefineSettings)
    latency: LatencySettings | None = None

    def __post_init__(self) -> None:
        check_int("sweep.trials", self.trials, lo=1)
        if not isinstance(self.warm_start, bool):
            raise ConfigError("sweep.warm_start", f"must be true or false, got {self.warm_start!r}")
        if not isinstance(self.refine, RefineSettings):
            raise ConfigError("sweep.refine", f"must be a mapping, got {type(self.refine).__name__}")
        check_int("sweep.concurrency", self.concurrency, lo=1)
        check_choice("sweep.sampler", self.sampler, list(SAMPLERS))
        objectives = {} if self.objectives is None else dict(check_mapping("sweep.objectives", self.objectives))
        check_int("sweep.seed", self.seed, lo=0)
        check_number("sweep.cpus_per_trial", self.cpus_per_trial, positive=True)
        for key in ("gpus_per_trial", "gpus_per_worker"):
            if check_number(f"sweep.{key}", getattr(self, key)) < 0:
                raise ConfigError(f"sweep.{key}", f"must be >= 0, got {getattr(self, key)!r}")
        check_int("sweep.population_size", self.population_size, lo=2, optional=True)
        if self.population_size is not None and self.sampler != "nsga2":
            raise ConfigError("sweep.population_size", f"applies to sampler nsga2 only, not {self.sampler!r}")
        if self.objectives is not None:
            object.__setattr__(self, "objectives", objectives)
        if "latency_ms" in objectives and self.latency is None:
            object.__setattr__(self, "latency", LatencySettings())
        if self.latency is not None and "latency_ms" not in objectives:
            raise ConfigError("sweep.latency", "applies to the latency_ms objective only; add latency_ms: min to "
                                               "sweep.objectives or remove sweep.latency")
        if self.population_size is None and self.sampler == "nsga2":
            object.__setattr__(self, "population_size", max(2, min(50, self.trials // 2)))

    @classmethod
    def from_dict(cls, data: Any) -> SweepSettings:
        data = check_mapping("sweep", data)
        check_keys("sweep.", data, [f.name for f in fields(cls)])
        values = dict(data)
        if "objectives" in values:
            values["objectives"] = dict(check_mapping("sweep.objectives", values["objectives"]))
        values["refine"] = RefineSettings.from_dict(values.get("refine"))
        if values.get("latency") is not None:
            values["latency"] = LatencySettings.from_dict(values["latency"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every key, but the GPU keys only where set (> 0) and ``latency`` only with its
        objective: a CPU sweep's resolved config, and so its MLflow params, stay as they were."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if (f.name not in _GPU_KEYS or getattr(self, f.name)) and f.name != "latency"}
        latency = {"latency": self.latency.to_dict()} if self.latency is not None else {}
        return {**values, "objectives": dict(self.objectives or {}), "refine": self.refine.to_dict(), **latency}


_TOP_LEVEL = ("name", "checkpoint", "data", "recipe", "space", "sweep", "tracking", "run_dir", *MODEL_KEYS, *TASK_KEYS)


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep, resolved: absolute ``checkpoint`` and ``run_dir``, a concrete tracking URI.

    The baseline is ``checkpoint`` or ``model`` (a :class:`ModelSettings`: a model name with
    weights, options and dataset), exactly one; :attr:`source` is whichever is set.

    ``recipe``: what recovers every trial's pruned model; the space's sampled ``finetune_epochs``,
    ``finetune_lr`` and ``weight_decay`` replace its values per trial, ``sweep.seed`` its seed.
    In a two-stage sweep (``sweep.refine``) the sampled values are ignored: screening runs
    :attr:`screen_recipe`, refinement :attr:`refine_recipe`.

    ``task``: the :class:`~pruning.tasks.TaskSpec` the config names (None: classification, or
    what the checkpoint records, which must then be classification); ``sweep.objectives`` are
    checked against it and default to its primary metric and MACs.
    """

    name: str
    space: SpaceSettings
    run_dir: str
    data: DataSettings = field(default_factory=DataSettings)
    recipe: RecoveryRecipe = field(default_factory=RecoveryRecipe)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    checkpoint: str | None = field(default=None, kw_only=True)
    model: ModelSettings | None = field(default=None, kw_only=True)
    task: Any = field(default=None, kw_only=True)  # TaskSpec | None

    def __post_init__(self) -> None:
        check_name(self.name)
        if isinstance(self.model, str):
            object.__setattr__(self, "model", ModelSettings(self.model))
        check_one_source(self.checkpoint, self.model)
        check_string("run_dir", self.run_dir)
        if not isinstance(self.recipe, RecoveryRecipe):
            raise ConfigError("recipe", f"must be a RecoveryRecipe, got {type(self.recipe).__name__}")
        if self.recipe.seed != self.sweep.seed:
            object.__setattr__(self, "recipe", replace(self.recipe, seed=self.sweep.seed))
        if self.tracking.uri is None:
            object.__setattr__(self, "tracking", replace(self.tracking, uri=default_tracking_uri(self.run_dir)))
        refine_recipe(self.recipe, self.sweep.refine)  # the overrides fit the recipe
        objectives = check_objectives(self.sweep.objectives, self.task_spec.build())
        if objectives != self.sweep.objectives:
            object.__setattr__(self, "sweep", replace(self.sweep, objectives=objectives))
        if self.model is not None:  # a checkpoint's dataset is checked when it is loaded
            self.data.check_dataset(self.model.dataset)

    @property
    def source(self) -> str | ModelSettings:
        """The baseline: the checkpoint path or the :class:`ModelSettings`."""
        return self.checkpoint if self.checkpoint is not None else self.model  # type: ignore[return-value]

    @property
    def task_spec(self):
        """The :class:`~pruning.tasks.TaskSpec` the sweep runs: the configured one, else classification."""
        from pruning.tasks import TaskSpec

        return self.task if self.task is not None else TaskSpec()

    @property
    def two_stage(self) -> bool:
        return self.sweep.refine.enabled

    @property
    def screen_recipe(self) -> RecoveryRecipe:
        """The screening recipe of a two-stage sweep: the config's, without fine-tuning."""
        return replace(self.recipe, finetune_epochs=0)

    @property
    def refine_recipe(self) -> RecoveryRecipe:
        """The refinement recipe: the config's with ``sweep.refine.recipe`` replacing its values."""
        return refine_recipe(self.recipe, self.sweep.refine)

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri  # type: ignore[return-value]  (filled in __post_init__)

    @property
    def objectives(self) -> dict[str, str]:
        return dict(self.sweep.objectives)

    def gpu_requests(self) -> dict[str, float]:
        """The GPUs this sweep asks for, per trial and per statistics worker, by config key."""
        return {f"sweep.{key}": getattr(self.sweep, key) for key in _GPU_KEYS}

    @classmethod
    def from_dict(cls, data: Any, *, default_name: str = "sweep") -> SweepConfig:
        data = check_mapping("", data)
        check_keys("", data, _TOP_LEVEL)
        checkpoint, model = model_source(data)
        if "space" not in data:
            raise ConfigError("space", "missing: a mapping with the search space's name and options")
        name = check_name(data.get("name", default_name))
        run_dir = data.get("run_dir")
        run_dir = make_absolute(str(Path("runs") / "sweeps" / name) if run_dir is None else check_string("run_dir", run_dir))
        return cls(
            name=name,
            checkpoint=checkpoint,
            model=model,
            task=task_spec_from(data),
            space=SpaceSettings.from_dict(data["space"]),
            run_dir=run_dir,
            data=DataSettings.from_dict(data.get("data")),
            recipe=recipe_from_section(data.get("recipe"), "sweep.seed"),
            sweep=SweepSettings.from_dict(data.get("sweep")),
            tracking=TrackingSettings.from_dict(data.get("tracking")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (YAML/JSON-able), every default filled in."""
        return {
            "name": self.name,
            **({"checkpoint": self.checkpoint} if self.model is None else self.model.to_dict()),
            # only where given: a classification sweep's resolved config (and MLflow params) stay as they were
            **({"task": self.task.name, "task_kwargs": dict(self.task.kwargs)} if self.task is not None else {}),
            "data": self.data.to_dict(),
            "recipe": recipe_section(self.recipe),
            "space": self.space.to_dict(),
            "sweep": self.sweep.to_dict(),
            "tracking": {"uri": self.tracking_uri, "experiment": self.tracking.experiment},
            "run_dir": self.run_dir,
        }


def dump_sweep_config(config: SweepConfig) -> str:
    """The resolved config as YAML (what every run records)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def load_sweep_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """Read a YAML sweep config; ``overrides`` maps dotted keys (``sweep.trials``) to values.

    The default sweep name is the file's stem. Raises :class:`ConfigError` (one line).
    """
    return SweepConfig.from_dict(read_config_file(path, overrides), default_name=default_name(path, "sweep"))
