"""What a Ray worker runs for a sweep trial (:mod:`orchestrator.sweeps.trials`) or a study cell
(:mod:`orchestrator.studies.trial`): the baseline's shared objects (put once by the driver,
fetched once per trial), the settings every worker of a baseline shares (its task among them, as a
:class:`~pruning.tasks.TaskSpec`: each worker builds the task itself), and the one prune ->
recover -> score path both take, every stage scored on the calibration split.

Metric names follow the task (P its primary metric, classification's ``accuracy``): a trial logs
every metric of the task, ``bn_<P>``, ``<stage>_<P>`` (:func:`stage_metrics`) and the steps'
``step<N>_<P>`` (:func:`step_metric_pattern`)."""
from __future__ import annotations

import ctypes
import functools
import gc
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from pruning.recovery import STAGES, RecoveryRecipe, reconstruction_targets
from pruning.tasks import Task, TaskSpec
from pruning.utils import model_device

__all__ = [
    "stage_metrics", "step_metric_pattern", "trial_metric_names", "SharedRefs", "WorkerSettings", "WorkerBaseline",
    "CriterionPlan", "trial_threads",
    "import_paths_of", "put_shared", "fetch_baseline", "prune_and_recover", "cost_metrics", "trial_device",
    "releases_memory",
]

def stage_metrics(primary: str) -> tuple[str, ...]:
    """Per recovery stage that ran: its calibration score ``<stage>_<primary>`` and (but for
    ``pruned``) its seconds."""
    return (*(f"{stage}_{primary}" for stage in STAGES), *(f"{stage}_seconds" for stage in STAGES[1:]))


def step_metric_pattern(primary: str) -> str:
    """The metrics of each step of a progressive recipe as a pattern of metric names:
    ``step<N>_macs_reduction``, ``step<N>_<primary>``, ``step<N>_<stage>_seconds``."""
    return rf"step[1-9][0-9]*_(macs_reduction|{re.escape(primary)}|[a-z_]+_seconds)"


def trial_metric_names(task: Task) -> tuple[str, ...]:
    """What :func:`prune_and_recover` may log on the calibration split, but for the steps'
    (:func:`step_metric_pattern`): every metric of ``task``, ``bn_<primary>``, :func:`stage_metrics`
    and the timings."""
    return (*(metric.name for metric in task.metrics), f"bn_{task.primary}", *stage_metrics(task.primary),
            "planned_reduction", "prune_seconds", "recover_seconds", "score_seconds")


@dataclass(frozen=True)
class SharedRefs:
    """Object-store references to a baseline's shared objects, put once by the driver."""

    model: Any  # ObjectRef -> (spec JSON, state_dict)
    space: Any  # ObjectRef -> PruningSpace
    batches: Any  # ObjectRef -> calibration batches
    stats: Any = None  # ObjectRef -> ActivationStats | None
    utilization: Any = None  # ObjectRef -> {group: curve} | None
    targets: Any = None  # ObjectRef -> OriginalTargets (the reconstruction's) | None


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of one baseline knows (small; travels with the trainable).

    data_config: the baseline's :class:`~pruning.data.DataConfig` (its splits load once per worker).
    shape: the model's input shape; threads: torch intra-op threads (:func:`trial_threads`).
    baseline: the unpruned model's metrics (``macs``, ``params``, ...), what reductions are of.
    import_paths: directories a worker puts on ``sys.path`` before it rebuilds the model or the
        task (an import path's module root, as the driver found it: :func:`import_paths_of`).
    task: the baseline's task; each worker builds it (:attr:`WorkerBaseline.task`).
    """

    data_config: Any
    shape: tuple[int, int, int]
    threads: int
    baseline: Mapping[str, float] = field(default_factory=dict)
    import_paths: tuple[str, ...] = ()
    task: TaskSpec = field(default_factory=TaskSpec)

    @classmethod
    def of(cls, setup, threads: int) -> WorkerSettings:
        """The settings of a prepared baseline (:class:`~orchestrator.experiment.baseline.BaselineSetup`)."""
        paths = dict.fromkeys((*import_paths_of(setup.spec.name), *import_paths_of(setup.task_spec.name)))
        return cls(setup.data_config, setup.shape, threads, dict(setup.metrics), tuple(paths), setup.task_spec)

    def enter(self) -> None:
        """Set this worker up for a trial: its thread count, the model's import roots on ``sys.path``."""
        import sys

        torch.set_num_threads(self.threads)
        for path in self.import_paths:
            if path not in sys.path:
                sys.path.append(path)


@dataclass(frozen=True)
class WorkerBaseline:
    """A baseline as a worker holds it once fetched (:func:`fetch_baseline`)."""

    spec_json: str
    state: Mapping[str, torch.Tensor]
    space: Any  # PruningSpace
    batches: Any  # calibration batches
    stats: Any  # ActivationStats | None
    utilization: Any  # {group: curve} | None
    settings: WorkerSettings
    targets: Any = None  # the reconstruction's OriginalTargets | None

    def build_model(self) -> nn.Module:
        """A fresh copy of the model, on the trial's device (:func:`trial_device`)."""
        return rebuild_model(self.spec_json, self.state).to(trial_device())

    @property
    def task(self) -> Task:
        """The baseline's task, built once per worker."""
        return _build_task(_task_key(self.settings.task))

    @property
    def splits(self):
        """The baseline's data splits (loaded by its task), loaded once per worker."""
        return _load_data(self.settings.data_config, _task_key(self.settings.task))


@dataclass(frozen=True)
class CriterionPlan:
    """How one trial prunes: a criterion (``options``; ``scores``: its channel scores, computed
    once elsewhere, instead of scoring in the trial), the pruning config and layer-ratio weights."""

    criterion: str
    config: Any  # PruningConfig
    ratio_weights: Any = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    scores: Any = None


def trial_threads(cpus: float) -> int:
    """Torch intra-op threads of a trial that Ray gives ``cpus`` CPUs (a fraction: one thread)."""
    return max(1, int(cpus))


def import_paths_of(name: str) -> tuple[str, ...]:
    """What ``WorkerSettings.import_paths`` holds for a baseline's model or task ``name``: the
    directory its module is imported from, for an import path (``package.module:factory``) that
    a worker started elsewhere might not find on its own ``sys.path``; nothing for the others."""
    from pruning.models import import_root

    root = import_root(name)
    return (root,) if root else ()


def put_shared(setup, stats, utilization, recipe: RecoveryRecipe | None = None) -> SharedRefs:
    """Put a baseline's shared objects in the Ray object store, once. With a ``recipe`` that
    reconstructs, the unpruned model's reconstruction targets too: one forward over the
    calibration batches here instead of one in every trial (a trial whose recipe draws other
    rows computes its own)."""
    import ray

    state = {k: v.detach().cpu() for k, v in setup.model.state_dict().items()}
    targets = None
    if recipe is not None and recipe.reconstruct:
        targets = ray.put(reconstruction_targets(setup.model, setup.space, setup.batches, recipe))
    return SharedRefs(
        model=ray.put((setup.spec.to_json(), state)),
        space=ray.put(setup.space),
        batches=ray.put(setup.batches),
        stats=ray.put(stats) if stats is not None else None,
        utilization=ray.put(utilization) if utilization is not None else None,
        targets=targets,
    )


def rebuild_model(spec_json: str, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A model from its spec (JSON) and state dict, as :func:`put_shared` stored it."""
    from pruning.structure import ModelSpec, rebuild_model as rebuild

    return rebuild(ModelSpec.from_json(spec_json), state)


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (``gpus_per_trial > 0``), else the CPU."""
    import ray

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


def fetch_baseline(refs: SharedRefs, settings: WorkerSettings) -> WorkerBaseline:
    """The shared objects of ``refs`` in this worker."""
    import ray

    spec_json, state = ray.get(refs.model)
    return WorkerBaseline(
        spec_json=spec_json,
        state=state,
        space=ray.get(refs.space),
        batches=ray.get(refs.batches),
        stats=ray.get(refs.stats) if refs.stats is not None else None,
        utilization=ray.get(refs.utilization) if refs.utilization is not None else None,
        settings=settings,
        targets=ray.get(refs.targets) if refs.targets is not None else None,
    )


def _task_key(spec: TaskSpec) -> str:
    """``spec`` as a hashable cache key (its kwargs are a dict)."""
    return json.dumps(spec.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=2)
def _build_task(key: str) -> Task:
    """The task of a :func:`_task_key`, built once per worker."""
    return TaskSpec.from_record(json.loads(key)).build()


@functools.lru_cache(maxsize=2)
def _load_data(config, task_key: str):
    """The splits of a data config as a task loads them, once per worker (Tune reuses a worker
    for the trials that follow; the splits are only read)."""
    return _build_task(task_key).load_data(config)


def prune_and_recover(model: nn.Module, baseline: WorkerBaseline, plan: CriterionPlan, recipe: RecoveryRecipe, *,
                      score_every_stage: bool = True):
    """Prune ``model`` (a fresh copy of ``baseline``'s, :meth:`WorkerBaseline.build_model`) with
    ``plan``, run ``recipe``; every stage scored on the calibration split (only the last without
    ``score_every_stage``). A progressive recipe re-scores the channels between its steps with
    the plan's criterion (statistics criteria: statistics collected afresh, with the options that
    criterion needs). Everything is scored for the baseline's task. Returns (pruned and recovered
    model, its prune outcome, metrics: :func:`trial_metric_names` and those of every step of a
    progressive recipe, :func:`step_metric_pattern`)."""
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.data import make_eval_loader
    from pruning.pipeline import prune_with_criterion
    from pruning.recovery import Rescorer, recover, recovery_data_for

    splits, batches, task = baseline.splits, baseline.batches, baseline.task
    primary = task.primary
    started = time.perf_counter()
    device = model_device(model)
    context = ScoringContext(calibration=batches, stats=baseline.stats, task=task)
    criterion = create_criterion(plan.criterion, seed=plan.seed, **dict(plan.options))
    example = task.example_inputs(baseline.settings.shape, device)
    outcome = prune_with_criterion(model, example, criterion, plan.config, context, ratio_weights=plan.ratio_weights,
                                   space=baseline.space, scores=plan.scores)
    prune_seconds = time.perf_counter() - started
    score = make_eval_loader(splits.calibration, device)
    recover_started = time.perf_counter()
    rescorer = Rescorer(criterion, example, ScoringContext(calibration=batches, device=device, task=task))
    data = recovery_data_for(splits, batches, score, score_every_stage=score_every_stage, targets=baseline.targets,
                             rescorer=rescorer, task=task)
    result = recover(model, outcome, recipe, data)
    # bn_<P>: the score before any training (the zero-cost proxy the sweep compares against)
    untrained = [value for stage, value in result.scores.items() if stage != "finetuned"]
    metrics = {
        **result.final_metrics,
        **({f"bn_{primary}": untrained[-1]} if untrained else {}),
        **{f"{stage}_{primary}": value for stage, value in result.scores.items()},
        **{f"{stage}_seconds": s for stage, s in result.seconds.items() if stage != "pruned"},
        **result.step_metrics(),
        "planned_reduction": outcome.planned_reduction,
        "prune_seconds": prune_seconds,
        "recover_seconds": result.total_seconds,
        "score_seconds": time.perf_counter() - recover_started - result.total_seconds,
    }
    return result.model, result.outcome, metrics


def cost_metrics(pruned: nn.Module, settings: WorkerSettings) -> dict[str, float]:
    """MACs and parameters of ``pruned`` and their reductions from the baseline's."""
    from pruning.structure import measure_cost

    cost = measure_cost(pruned, settings.shape)
    metrics = {
        "macs": float(cost.macs),
        "params": float(cost.params),
        "macs_reduction": 1.0 - cost.macs / settings.baseline["macs"],
        "params_reduction": 1.0 - cost.params / settings.baseline["params"],
    }
    return metrics


def releases_memory(trial):
    """Hand a trial's freed memory back to the system when it ends. Tune reuses a worker for the
    trials that follow (``reuse_actors``), and glibc keeps what a trial freed: measured, the
    worker grew about 50 MB a ResNet-20 screening trial (5 GB after 40), flat with this."""

    @functools.wraps(trial)
    def run(*args, **kwargs):
        try:
            return trial(*args, **kwargs)
        finally:
            gc.collect()
            if _LIBC is not None:
                _LIBC.malloc_trim(0)

    return run


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _glibc()
