"""Trial bodies, run in Ray workers: a sweep trial (one sampled plan) here, a study cell in
:mod:`orchestrator.studies.trial`. Both prune a shared baseline and recover it with the one
recipe (:func:`pruning.recovery.recover`), scoring every stage on the calibration split."""
from __future__ import annotations

import ctypes
import functools
import gc
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from orchestrator.sweeps.baseline import BaselineSetup
from pruning.recovery import STAGES, RecoveryRecipe
from pruning.utils import model_device

__all__ = [
    "TRIAL_METRICS", "TRIAL_TAGS", "STAGE_METRICS", "MODEL_FILE",
    "InjectedFailure", "SharedRefs", "TrialSettings", "import_paths_of", "put_shared", "sweep_trial", "trial_threads",
]

#: per recovery stage that ran: its calibration accuracy and (but for ``pruned``) its seconds
STAGE_METRICS = (*(f"{stage}_accuracy" for stage in STAGES), *(f"{stage}_seconds" for stage in STAGES[1:]))
#: numeric results every sweep trial reports (latency_ms only when it is an objective)
TRIAL_METRICS = (
    "accuracy", "bn_accuracy", *STAGE_METRICS, "macs", "params", "macs_reduction", "params_reduction",
    "planned_reduction", "latency_ms", "feasible", "prune_seconds", "recover_seconds", "score_seconds",
    "body_seconds", "cpu_seconds", "trial_cpus", "trial_gpus", "trial_seconds",
)
#: string results logged as tags; ``recipe``: the recipe the trial ran, as JSON (a two-stage
#: sweep ignores the sampled fine-tuning params, so they do not say what ran); ``device``: where
#: the trial's model ran (e.g. ``cuda:0``, ``cpu``)
TRIAL_TAGS = ("criterion", "infeasible_reason", "recipe", "device")
MODEL_FILE = "pruned.pt"
METRICS_FILE = "metrics.json"


class InjectedFailure(RuntimeError):
    """Raised by trials selected with ``run_sweep(..., inject_failures=...)`` (tests of failure handling)."""


@dataclass(frozen=True)
class SharedRefs:
    """Object-store references, put once per sweep by the driver."""

    model: Any  # ObjectRef -> (spec JSON, state_dict)
    space: Any  # ObjectRef -> PruningSpace
    batches: Any  # ObjectRef -> calibration batches
    stats: Any = None  # ObjectRef -> ActivationStats | None
    utilization: Any = None  # ObjectRef -> {group: curve} | None


@dataclass(frozen=True)
class TrialSettings:
    """Plain settings every trial shares (small; travels with the trainable).

    seed: the criterion's seed in a sweep trial (a study cell takes its own from the grid).
    recipe: the recovery recipe; a sweep trial replaces its fine-tuning values by the sampled
        ones (unless ``sampled_finetune`` is false: the stages of a two-stage sweep run their
        recipe as it is); a study cell runs its own recipe, seeded by the cell's seed.
    score_every_stage: score every recovery stage (False: the last only; screening trials).
    import_paths: directories a worker puts on ``sys.path`` before it rebuilds the model (an
        import-path model's module root, as the driver found it: :func:`import_paths_of`).
    """

    data_config: dict[str, Any]
    shape: tuple[int, int, int]
    seed: int
    threads: int
    baseline: dict[str, float]
    recipe: RecoveryRecipe
    measure_latency: bool = False
    space_name: str | None = None
    space_options: dict[str, Any] | None = None
    strategy: str = "full"
    sampled_finetune: bool = True
    score_every_stage: bool = True
    import_paths: tuple[str, ...] = ()


def trial_threads(cpus: float) -> int:
    """Torch intra-op threads of a trial that Ray gives ``cpus`` CPUs (a fraction: one thread)."""
    return max(1, int(cpus))


def import_paths_of(model_name: str) -> tuple[str, ...]:
    """What ``TrialSettings.import_paths`` holds for a baseline model: the directory its module
    is imported from, for an import-path model (``package.module:factory``) that a worker
    started elsewhere might not find on its own ``sys.path``; nothing for the other models."""
    from pruning.models import import_root

    root = import_root(model_name)
    return (root,) if root else ()


def _make_importable(settings: TrialSettings) -> None:
    """Put the driver's import roots of the model on this worker's ``sys.path`` (once)."""
    import sys

    for path in settings.import_paths:
        if path not in sys.path:
            sys.path.append(path)


def put_shared(setup: BaselineSetup, stats, utilization) -> SharedRefs:
    """Put the baseline's shared objects in the Ray object store, once."""
    import ray

    state = {k: v.detach().cpu() for k, v in setup.model.state_dict().items()}
    return SharedRefs(
        model=ray.put((setup.spec.to_json(), state)),
        space=ray.put(setup.space),
        batches=ray.put(setup.batches),
        stats=ray.put(stats) if stats is not None else None,
        utilization=ray.put(utilization) if utilization is not None else None,
    )


def _rebuild_model(spec_json: str, state: Mapping[str, torch.Tensor]) -> nn.Module:
    from pruning.structure import ModelSpec, rebuild_model

    return rebuild_model(ModelSpec.from_json(spec_json), state)


def _trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (``sweep.gpus_per_trial > 0``), else the CPU."""
    import ray

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


def _prune_and_recover(model, space, shape, criterion_name: str, pruning_config, ratio_weights, batches, stats,
                       splits, *, seed: int, recipe: RecoveryRecipe, score_every_stage: bool = True,
                       criterion_options: Mapping[str, Any] | None = None, scores=None):
    """Prune a copy of ``model`` with a criterion (its ``criterion_options``; ``scores``: its
    channel scores, computed once elsewhere, instead of scoring here), run the recipe; every
    stage scored on the calibration split. Returns (pruned model, prune outcome, metrics)."""
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.data import make_eval_loader
    from pruning.pipeline import prune_with_criterion
    from pruning.recovery import recover, recovery_data_for

    started = time.perf_counter()
    context = ScoringContext(calibration=batches, stats=stats)
    outcome = prune_with_criterion(model, torch.zeros(1, *shape, device=model_device(model)),
                                   create_criterion(criterion_name, seed=seed, **dict(criterion_options or {})),
                                   pruning_config, context, ratio_weights=ratio_weights, space=space, scores=scores)
    prune_seconds = time.perf_counter() - started
    score = make_eval_loader(splits.calibration, model_device(model))
    recover_started = time.perf_counter()
    result = recover(model, outcome, recipe, recovery_data_for(splits, batches, score, score_every_stage=score_every_stage))
    # bn_accuracy: the accuracy before any training (the zero-cost proxy the sweep compares against)
    untrained = [acc for stage, acc in result.accuracy.items() if stage != "finetuned"]
    metrics = {
        "accuracy": result.final_accuracy,
        **({"bn_accuracy": untrained[-1]} if untrained else {}),
        **{f"{stage}_accuracy": acc for stage, acc in result.accuracy.items()},
        **{f"{stage}_seconds": s for stage, s in result.seconds.items() if stage != "pruned"},
        "planned_reduction": outcome.planned_reduction,
        "prune_seconds": prune_seconds,
        "recover_seconds": sum(result.seconds.values()),
        "score_seconds": time.perf_counter() - recover_started - sum(result.seconds.values()),
    }
    return outcome.model, outcome, metrics


def _cost_metrics(pruned: nn.Module, shape, baseline: Mapping[str, float], latency: bool, threads: int) -> dict[str, float]:
    from pruning.structure import measure_cost, measure_latency

    cost = measure_cost(pruned, shape)
    metrics = {
        "macs": float(cost.macs),
        "params": float(cost.params),
        "macs_reduction": 1.0 - cost.macs / baseline["macs"],
        "params_reduction": 1.0 - cost.params / baseline["params"],
    }
    if latency:
        metrics["latency_ms"] = measure_latency(pruned, shape, batch_size=1, threads=threads).median_ms
    return metrics


def _report_restored() -> bool:
    """Report the saved result again, without running, when this trial finished before: restored
    from its final checkpoint, or killed between its report and the experiment snapshot that would
    have recorded it (Tune then restarts it from scratch, in the same folder, where that checkpoint
    lies unrecorded). A checkpoint that does not read back (a kill mid-upload) runs the trial again."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            metrics = _read_saved(Path(folder))
        if metrics is None:
            return False
        tune.report(metrics)
        return True
    saved = sorted(Path(tune.get_context().get_storage().trial_fs_path).glob("checkpoint_*"))
    metrics = _read_saved(saved[-1]) if saved else None
    if metrics is None:
        return False
    # reported with its checkpoint, so that Tune (which did not record it) holds the model again
    with tempfile.TemporaryDirectory(prefix="prunesweep-") as folder:
        shutil.copytree(saved[-1], folder, dirs_exist_ok=True)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    return True


def _read_saved(folder: Path) -> dict[str, Any] | None:
    """The metrics a trial checkpoint folder holds, or None where its files do not read back."""
    from pruning.structure import CheckpointError, read_checkpoint

    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
        read_checkpoint(folder / MODEL_FILE)
    except (OSError, ValueError, CheckpointError):
        return None
    return metrics


def _report_with_model(metrics: dict[str, Any], pruned: nn.Module, spec_json: str, meta: dict[str, Any]) -> None:
    from ray import tune

    from pruning.structure import ModelSpec, save_checkpoint

    spec = ModelSpec.from_json(spec_json)
    with tempfile.TemporaryDirectory(prefix="prunesweep-") as folder:
        save_checkpoint(Path(folder) / MODEL_FILE, pruned, replace(spec, meta={**spec.meta, "pruning": meta}))
        (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _load_trial_data(settings: TrialSettings):
    return _load_data(json.dumps(settings.data_config, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _load_data(config_json: str):
    """The splits of a data config, loaded once per worker (Tune reuses a worker for the trials
    that follow; the splits are only read)."""
    from pruning.data import DataConfig, load_data

    return load_data(DataConfig(**json.loads(config_json)))


def _releases_memory(trial):
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


@_releases_memory
def sweep_trial(config: dict[str, Any], *, refs: SharedRefs, settings: TrialSettings) -> None:
    """One sweep trial (runs in a Ray worker): plan, check, prune, recover, score, report once."""
    import ray
    from ray import tune

    from search_spaces import SpaceContext, create_search_space

    entered = time.perf_counter()
    torch.set_num_threads(settings.threads)
    _make_importable(settings)
    if _report_restored():
        return
    started, cpu_started = time.perf_counter(), time.process_time()
    if config.get("_inject_failure"):
        raise InjectedFailure(f"injected failure in trial {config.get('_trial_number')}")
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    space = ray.get(refs.space)
    stats = ray.get(refs.stats) if refs.stats is not None else None
    utilization = ray.get(refs.utilization) if refs.utilization is not None else None
    context = SpaceContext(space=space, strategy=settings.strategy, stats=stats, utilization=utilization)
    search_space = create_search_space(settings.space_name, **(settings.space_options or {}))
    plan = search_space.to_plan(params, context)
    reason = search_space.check_feasible(plan, context)
    base = settings.baseline
    if reason is not None:
        worst = {"accuracy": 0.0, "bn_accuracy": 0.0, "macs": base["macs"], "params": base["params"],
                 "macs_reduction": 0.0, "params_reduction": 0.0, "feasible": 0, "criterion": plan.criterion,
                 "infeasible_reason": reason, "trial_seconds": time.perf_counter() - entered}
        if settings.measure_latency:
            worst["latency_ms"] = base["latency_ms"]
        tune.report(worst)
        return
    recipe = settings.recipe
    if settings.sampled_finetune:
        recipe = replace(recipe, finetune_epochs=plan.finetune_epochs, finetune_lr=plan.finetune_lr,
                         weight_decay=plan.weight_decay)
    spec_json, state = ray.get(refs.model)
    model = _rebuild_model(spec_json, state).to(_trial_device())
    pruned, outcome, metrics = _prune_and_recover(
        model, space, settings.shape, plan.criterion, plan.config, plan.ratio_weights, ray.get(refs.batches), stats,
        _load_trial_data(settings), seed=settings.seed, recipe=recipe, score_every_stage=settings.score_every_stage,
    )
    metrics.update(_cost_metrics(pruned, settings.shape, base, settings.measure_latency, settings.threads))
    # the trial's own time and CPU time (Tune's bookkeeping and the checkpoint excluded): the
    # compute a benchmark compares at, and the remainder of Tune's time_total_s is Tune/Ray
    assigned = ray.get_runtime_context().get_assigned_resources()
    metrics.update(feasible=1, criterion=plan.criterion, recipe=json.dumps(recipe.to_dict(), sort_keys=True),
                   body_seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu_started,
                   trial_cpus=float(assigned.get("CPU", 0.0)), trial_gpus=float(assigned.get("GPU", 0.0)),
                   device=str(model_device(pruned)),
                   # saved with the result, so that a re-report (see _report_restored) keeps it
                   trial_seconds=time.perf_counter() - entered)
    meta = {"criterion": plan.criterion, "params": params, "channels": dict(outcome.keep),
            "strategy": settings.strategy, "space": settings.space_name, "recipe": recipe.to_dict()}
    _report_with_model(metrics, pruned, spec_json, meta)
