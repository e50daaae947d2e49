"""The unpruned baseline, prepared once on the driver: model, task, data, calibration batches,
its metrics, and the activation statistics / utilization curves every trial shares.

The baseline is a checkpoint, or a :class:`~orchestrator.experiment.model_settings.ModelSettings`
(a model name with a state_dict file, options and dataset), which is checked up front to fit
its dataset and to be prunable. Trials rebuild the model from its spec by name, so a
``package.module:factory`` model (or task) must be importable wherever trials run.

The task is the one a checkpoint records (none recorded: classification), which a configured
task may not contradict, or for a model the configured one (default classification):
:func:`~orchestrator.experiment.task_settings.resolve_task`.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.data_settings import DataSettings
from orchestrator.experiment.model_settings import ModelSettings
from orchestrator.experiment.task_settings import resolve_task
from pruning.statistics import StatsOptions
from pruning.tasks import Task, TaskSpec

__all__ = [
    "BaselineSetup",
    "prepare_baseline",
    "compute_baseline_statistics",
    "compute_utilization_curves",
    "needs_statistics",
    "StatsWorkers",
    "load_or_compute_statistics",
    "load_or_compute_utilization",
    "say",
]

def say(progress: bool, message: str) -> None:
    """A progress line on stderr (stdout stays clean for ``--json``)."""
    if progress:
        print(message, file=sys.stderr, flush=True)


@dataclass
class BaselineSetup:
    """What the driver knows about the unpruned model before any trial starts: ``task_spec``
    (recorded in ``spec.meta["task"]``) built as ``task``; ``metrics``: see :func:`prepare_baseline`."""

    model: nn.Module
    spec: Any  # ModelSpec
    data_config: Any  # DataConfig
    splits: Any  # DataSplits
    shape: tuple[int, int, int]
    space: Any  # PruningSpace
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    task: Task
    task_spec: TaskSpec
    metrics: dict[str, float] = field(default_factory=dict)


def _data_config(spec, data: DataSettings, dataset: str | None = None):
    from pruning.data import recorded_data_fields

    recorded = recorded_data_fields(spec.meta.get("data"), spec.input_shape) if spec is not None else {"name": dataset}
    return data.data_config(recorded)


def prepare_baseline(
    checkpoint: str | ModelSettings,
    data: DataSettings,
    *,
    task: TaskSpec | None = None,
    progress: bool = False,
) -> BaselineSetup:
    """Load the checkpoint (or build the :class:`ModelSettings` model with its weights), resolve
    its task (``task``: the configured one, None: not configured) and load its data through it,
    take the calibration batches, measure the baseline.

    ``metrics``: every metric of the task on the calibration
    split (what trials are scored on; classification: ``accuracy``), ``test_<primary>`` (its
    primary metric on the test split; classification: ``test_accuracy``), ``macs`` and
    ``params`` (a sweep with a latency objective adds ``latency_ms`` on its target).
    """
    from pruning.data import calibration_batches, make_eval_loader
    from pruning.structure import CheckpointError, PruningSpace, check_fits, load_checkpoint, measure_cost
    from pruning.training import evaluate
    from pruning.utils import model_device

    if isinstance(checkpoint, ModelSettings):
        task_spec = resolve_task(task, None)
        built = task_spec.build()
        model, spec, data_config, splits, shape = _build_baseline(checkpoint, data, built, task_spec)
    else:
        model, spec = load_checkpoint(checkpoint)
        if spec.name is None:
            raise CheckpointError(f"{checkpoint!r} holds a custom model; sweeps need a named model")
        task_spec = resolve_task(task, spec.meta.get("task"), f"checkpoint {checkpoint!r}")
        built = task_spec.build()
        data_config = _data_config(spec, data)
        splits = built.load_data(data_config)
        shape = tuple(check_fits(model, spec, splits))
        # trials save their checkpoints from this spec: it records the size the sweep runs at and the task
        spec = replace(spec, input_shape=shape, meta={**spec.meta, "data": asdict(data_config),
                                                      "task": task_spec.to_dict()})
    if len(splits.calibration) == 0:
        raise ConfigError("checkpoint", "its data config holds out no calibration images (calibration_size 0)")
    space = PruningSpace.build(model, torch.zeros(1, *shape))
    batches = calibration_batches(splits, data.calibration_images, data.batch_size)
    cost = measure_cost(model, shape)
    device = model_device(model)
    calibration = evaluate(model, make_eval_loader(splits.calibration, device), task=built, progress=progress)
    test = evaluate(model, make_eval_loader(splits.test, device), task=built, progress=progress)
    metrics = {
        **calibration.metrics,
        f"test_{built.primary}": test.score,
        "macs": float(cost.macs),
        "params": float(cost.params),
    }
    return BaselineSetup(model, spec, data_config, splits, shape, space, batches, built, task_spec, metrics)


def _build_baseline(settings: ModelSettings, data: DataSettings, task: Task, task_spec: TaskSpec):
    """(model, spec, data config, splits, shape) of a model given by name and weights file, for ``task``."""
    from pruning.models import is_external, read_weights
    from pruning.structure import model_for_data

    state = read_weights(settings.weights) if settings.weights is not None else None  # before the data
    data_config = _data_config(None, data, settings.dataset)
    splits = task.load_data(data_config)
    meta = {"data": asdict(data_config), "task": task_spec.to_dict(),
            **({"weights": settings.weights} if settings.weights else {})}
    model, spec, shape = model_for_data(settings.name, splits, weights=state, kwargs=settings.kwargs, meta=meta,
                                        prunable=is_external(settings.name), weights_name=settings.weights, task=task)
    return model, spec, data_config, splits, tuple(shape)


@dataclass(frozen=True)
class StatsWorkers:
    """The Ray actors that compute a baseline's activation statistics: how many, and the CPUs and
    GPUs each one holds."""

    count: int
    cpus: float = 1
    gpus: float = 0

    def within_cluster(self) -> StatsWorkers:
        """As many of these workers as the joined Ray cluster's CPUs hold at once (at least one):
        a concurrency above the cluster's size only queues trials, but actors beyond it would
        never start."""
        import ray

        fits = int(float(ray.cluster_resources().get("CPU", 0)) // self.cpus) if self.cpus > 0 else self.count
        return replace(self, count=max(1, min(self.count, fits)))


def compute_baseline_statistics(setup: BaselineSetup, workers: StatsWorkers, options: StatsOptions | None = None,
                                progress: bool = False):
    """Activation statistics of the unpruned model over the calibration batches, computed by
    ``workers`` (shards merged exactly on the driver; Ray must be up) as ``options`` say
    (:func:`pruning.criteria.statistics_options`; default :class:`StatsOptions()`)."""
    from orchestrator.distributed import ShardOptions, distributed_stats

    shards = ShardOptions(workers=workers.count, cpus_per_worker=workers.cpus, gpus_per_worker=workers.gpus,
                          progress=progress)
    return distributed_stats(setup.model, setup.space.groups, setup.batches, options or StatsOptions(), shards)


def compute_utilization_curves(model: nn.Module, space, strategy: str, batches, *, seed: int = 0,
                               task: Task | None = None) -> dict[str, torch.Tensor]:
    """SNPFI utilization curves U(k), k = 0..size, of every group ``strategy`` may prune, the
    games played for ``task`` (None: classification)."""
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.games import utilization_curve

    snpfi = create_criterion("snpfi", seed=seed)
    context = ScoringContext(calibration=batches, task=task if task is not None else TaskSpec().build())
    return {
        name: utilization_curve(game, est.values).float()
        for name, game, est in snpfi.estimates(model, space.select(strategy), context)
    }


def needs_statistics(criteria: Sequence[str], space_needs_stats: bool = False) -> tuple[bool, dict[str, bool]]:
    """(statistics needed, the :class:`StatsOptions` to collect them with) for these
    criteria (default options) and a search space that does (``SearchSpace.needs_stats``) or does
    not read the statistics itself."""
    from pruning.criteria import create_criterion, statistics_options

    created = [create_criterion(c) for c in criteria]
    return space_needs_stats or any(c.needs_stats for c in created), statistics_options(created)


def load_or_compute_statistics(setup: BaselineSetup, folder: Path, workers: StatsWorkers,
                                options: StatsOptions | None = None, progress: bool = False):
    """The baseline's activation statistics (:func:`compute_baseline_statistics`), computed once
    and kept in ``folder`` (``<run_dir>/baseline``, a study's ``<run_dir>/baselines/<label>``), so
    that a resume reads them back."""
    from pruning.statistics import ActivationStats

    path = folder / "stats.pt"
    if path.is_file():
        return ActivationStats.load(path)
    say(progress, f"computing activation statistics on {sum(len(y) for _, y in setup.batches)} calibration images")
    stats = compute_baseline_statistics(setup, workers, options, progress)
    folder.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats


def load_or_compute_utilization(setup: BaselineSetup, folder: Path, strategy: str, *, seed: int = 0,
                                progress: bool = False) -> dict[str, torch.Tensor]:
    """SNPFI's utilization curves of the baseline (:func:`compute_utilization_curves`), computed
    once and kept in ``folder``, so that a resume reads them back."""
    from pruning.utils import atomic_write

    path = folder / "utilization.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    say(progress, "computing SNPFI utilization curves")
    utilization = compute_utilization_curves(setup.model, setup.space, strategy, setup.batches, seed=seed,
                                             task=setup.task)
    atomic_write(path, lambda tmp: torch.save(utilization, tmp))
    return utilization
