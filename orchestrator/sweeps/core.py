"""Sweeps: search the accuracy-vs-cost Pareto front with Ray Tune + Optuna, tracked in MLflow.

:func:`run_sweep` runs one sweep from a :class:`~orchestrator.sweeps.config.SweepConfig`:

1. The driver loads the baseline checkpoint once, takes the calibration batches, computes the
   activation statistics once (:func:`compute_baseline_statistics`) and, for the ``snpfi``
   space, the utilization curves once (:func:`compute_utilization_curves`); both are saved in
   ``<run_dir>/baseline/`` and reused on resume. Model state, pruning space, statistics, curves
   and calibration batches go into the Ray object store once (``ray.put``); trials receive the
   references and never recompute or re-send them.
2. Tune runs ``trials`` trials, ``concurrency`` at a time, sampled by Optuna (``OptunaSearch``
   with the space's define-by-run function, multi-objective via ``metric=[...]``/``mode=[...]``).
   A trial builds its plan (``space.to_plan``); an infeasible plan (``space.check_feasible``) is
   reported at once with the worst objective values (accuracy 0, the unpruned MACs/params/latency)
   and ``feasible=0``, without training, so it never enters the front. Otherwise the trial prunes
   the shared baseline with the plan's criterion, recalibrates BN on ``bn_batches`` training
   batches (adaptive BN; ``bn_accuracy`` is the calibration accuracy right after it), fine-tunes,
   scores accuracy on the CALIBRATION split, measures MACs/params (latency only if it is an
   objective), saves the pruned model as a Tune checkpoint and reports every metric once.
3. The driver logs to MLflow (``orchestrator.sweeps.tracking``): a parent run with the resolved config,
   one nested run per trial (FINISHED or FAILED with the error), and at the end the Pareto front
   over feasible finished trials: table, plot, test-split accuracy of the front only, and the
   front's pruned checkpoints as artifacts.

A crashed trial is recorded as FAILED and the sweep goes on. An interrupted sweep (driver killed)
continues with ``run_sweep(config, resume=True)`` / ``prunesweep sweep --resume RUN_DIR``:
``Tuner.restore`` brings back the trials and the Optuna study; finished trials are neither lost
nor repeated, in Tune or in MLflow.

:func:`run_compare` runs a fixed criterion x FLOPs-target x seed grid the same way (Tune
``grid_search``, no Optuna) and logs a mean/std comparison table and plot.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import torch
import yaml
from torch import nn

from orchestrator.distributed import network as private_network
from orchestrator.report import format_table
from orchestrator.sweeps.config import (
    RESOLVED_CONFIG_FILE,
    CompareConfig,
    ConfigError,
    DataSettings,
    SweepConfig,
    TrackingSettings,
    default_tracking_uri,
    dump_sweep_config,
    flatten,
    load_sweep_config,
)
from orchestrator.sweeps.tracking import (
    TAG_COMMIT,
    TAG_PARETO,
    TAG_SWEEP,
    MlflowTrialLogger,
    Tracker,
    TrialRecord,
    git_commit,
)

__all__ = [
    "SweepResult",
    "CompareResult",
    "BaselineSetup",
    "InjectedFailure",
    "prepare_baseline",
    "compute_baseline_statistics",
    "compute_utilization_curves",
    "make_sampler",
    "run_sweep",
    "resume_sweep",
    "read_front",
    "run_compare",
    "TRIAL_METRICS",
]

#: numeric results every sweep trial reports (latency_ms only when it is an objective)
TRIAL_METRICS = (
    "accuracy", "bn_accuracy", "macs", "params", "macs_reduction", "params_reduction",
    "planned_reduction", "latency_ms", "feasible", "prune_seconds", "recover_seconds",
)
#: string results logged as tags
TRIAL_TAGS = ("criterion", "infeasible_reason")
COMPARE_METRICS = ("accuracy", "bn_accuracy", "test_accuracy", "macs", "params", "macs_reduction",
                   "params_reduction", "prune_seconds", "recover_seconds")
MODEL_FILE = "pruned.pt"
METRICS_FILE = "metrics.json"
#: Tune's experiment-state snapshot period during a sweep (seconds; Tune's own default is >= 10):
#: a short period keeps the window in which a killed driver forgets a finished trial small
SNAPSHOT_PERIOD_S = "1"
EVAL_BATCH = 512


class InjectedFailure(RuntimeError):
    """Raised by trials selected with ``run_sweep(..., inject_failures=...)`` (tests of failure handling)."""


# ---------------------------------------------------------------------------------------------
# the baseline, prepared once on the driver


@dataclass
class BaselineSetup:
    """What the driver knows about the unpruned model before any trial starts."""

    model: nn.Module
    spec: Any  # ModelSpec
    data_config: Any  # DataConfig
    splits: Any  # DataSplits
    shape: tuple[int, int, int]
    space: Any  # PruningSpace
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.shape)


def _data_config(spec, data: DataSettings):
    from pruning.data import DataConfig

    fields = dict(spec.meta.get("data") or {})
    if data.data_root is not None:
        fields["root"] = data.data_root
    if data.test_subset is not None:
        fields["test_subset"] = data.test_subset
    return DataConfig(**fields)


def prepare_baseline(
    checkpoint: str,
    data: DataSettings,
    *,
    latency: bool = False,
    threads: int = 1,
    progress: bool = False,
) -> BaselineSetup:
    """Load the checkpoint and its data, take the calibration batches, measure the baseline.

    ``metrics``: ``accuracy`` (calibration split, what trials are scored on), ``test_accuracy``,
    ``macs``, ``params`` and, with ``latency``, ``latency_ms`` (batch 1, ``threads`` threads).
    """
    from orchestrator.cli.commands import _calibration_batches, _check_fits
    from pruning.structure import CheckpointError, load_checkpoint
    from pruning.data import load_data, make_loader
    from pruning.structure import PruningSpace
    from pruning.structure import measure_cost, measure_latency
    from pruning.training import evaluate

    model, spec = load_checkpoint(checkpoint)
    if spec.name is None:
        raise CheckpointError(f"{checkpoint!r} holds a custom model; sweeps need a registered model")
    data_config = _data_config(spec, data)
    splits = load_data(data_config)
    shape = tuple(_check_fits(model, spec.name, splits, spec.num_classes))
    if len(splits.calibration) == 0:
        raise ConfigError("checkpoint", "its data config holds out no calibration images (calibration_size 0)")
    space = PruningSpace.build(model, torch.zeros(1, *shape))
    batches = _calibration_batches(splits, data.calibration_images, data.batch_size)
    cost = measure_cost(model, shape)
    metrics = {
        "accuracy": evaluate(model, make_loader(splits.calibration, EVAL_BATCH, shuffle=False), progress=progress).accuracy,
        "test_accuracy": evaluate(model, make_loader(splits.test, EVAL_BATCH, shuffle=False), progress=progress).accuracy,
        "macs": float(cost.macs),
        "params": float(cost.params),
    }
    if latency:
        metrics["latency_ms"] = measure_latency(model, shape, batch_size=1, threads=threads).median_ms
    return BaselineSetup(model, spec, data_config, splits, shape, space, batches, metrics)


def compute_baseline_statistics(
    model: nn.Module, space, batches, *, workers: int, cpus_per_worker: float = 1, chip: bool = False,
    progress: bool = False,
):
    """Activation statistics of the unpruned model over the calibration batches, computed once
    per sweep by ``workers`` Ray actors (shards merged exactly on the driver; Ray must be up)."""
    from orchestrator.distributed.core import distributed_stats

    return distributed_stats(model, space.groups, batches, workers=workers, cpus_per_worker=cpus_per_worker,
                             chip=chip, progress=progress)


def compute_utilization_curves(model: nn.Module, space, strategy: str, batches, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """SNPFI utilization curves U(k), k = 0..size, of every group ``strategy`` may prune."""
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.games import utilization_curve

    snpfi = create_criterion("snpfi", seed=seed)
    context = ScoringContext(calibration=batches)
    return {
        name: utilization_curve(game, est.values).float()
        for name, game, est in snpfi.estimates(model, space.select(strategy), context)
    }


def _needs_stats(criteria: Sequence[str], space_name: str | None = None) -> tuple[bool, bool]:
    """(statistics needed, CHIP statistics needed) for these criteria and space."""
    from pruning.criteria import criterion_class

    needs = space_name == "concentration" or any(criterion_class(c).needs_stats for c in criteria)
    return needs, "chip" in criteria


# ---------------------------------------------------------------------------------------------
# what trials receive


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
    """Plain settings every trial shares (small; travels with the trainable)."""

    data_config: dict[str, Any]
    shape: tuple[int, int, int]
    bn_batches: int
    batch_size: int
    finetune_subset: int | None
    seed: int
    threads: int
    baseline: dict[str, float]
    measure_latency: bool = False
    space_name: str | None = None
    space_options: dict[str, Any] | None = None
    strategy: str = "full"
    # compare only
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4


def _put_shared(setup: BaselineSetup, stats, utilization) -> SharedRefs:
    import ray

    state = {k: v.detach().cpu() for k, v in setup.model.state_dict().items()}
    return SharedRefs(
        model=ray.put((setup.spec.to_json(), state)),
        space=ray.put(setup.space),
        batches=ray.put(setup.batches),
        stats=ray.put(stats) if stats is not None else None,
        utilization=ray.put(utilization) if utilization is not None else None,
    )


def _rebuild_model(spec_json: str, state: Mapping[str, torch.Tensor]):
    from pruning.structure import ModelSpec, apply_widths
    from pruning.models import create_model

    spec = ModelSpec.from_json(spec_json)
    model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels)
    apply_widths(model, spec.widths)
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def _prune_and_recover(
    model: nn.Module,
    space,
    shape,
    criterion_name: str,
    pruning_config,
    ratio_weights,
    batches,
    stats,
    splits,
    *,
    seed: int,
    bn_batches: int,
    batch_size: int,
    finetune_epochs: int,
    finetune_lr: float,
    weight_decay: float,
    finetune_subset: int | None,
):
    """Prune with a criterion, recalibrate BN, fine-tune; score on the calibration split."""
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.data import make_loader
    from pruning.pipeline import prune_with_criterion
    from pruning.training import TrainConfig, evaluate, recalibrate_bn, train

    started = time.perf_counter()
    criterion = create_criterion(criterion_name, seed=seed)
    context = ScoringContext(calibration=batches, stats=stats)
    outcome = prune_with_criterion(model, torch.zeros(1, *shape), criterion, pruning_config, context,
                                   ratio_weights=ratio_weights, space=space)
    pruned = outcome.model
    prune_seconds = time.perf_counter() - started
    started = time.perf_counter()
    calibration = make_loader(splits.calibration, EVAL_BATCH, shuffle=False)
    if bn_batches:
        loader = make_loader(splits.train, batch_size, shuffle=True, seed=seed, augment=splits.augment_by_default)
        recalibrate_bn(pruned, loader, bn_batches)
    bn_accuracy = evaluate(pruned, calibration).accuracy
    accuracy = bn_accuracy
    if finetune_epochs:
        data = splits.train
        if finetune_subset is not None:
            data = torch.utils.data.Subset(splits.train, range(min(finetune_subset, len(splits.train))))
        config = TrainConfig(epochs=finetune_epochs, lr=finetune_lr, weight_decay=weight_decay,
                             batch_size=batch_size, seed=seed)
        train(pruned, make_loader(data, batch_size, shuffle=True, seed=seed, augment=splits.augment_by_default),
              config, progress=False)
        accuracy = evaluate(pruned, calibration).accuracy
    metrics = {
        "accuracy": accuracy,
        "bn_accuracy": bn_accuracy,
        "planned_reduction": outcome.planned_reduction,
        "prune_seconds": prune_seconds,
        "recover_seconds": time.perf_counter() - started,
    }
    return pruned, outcome, metrics


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
    """A trial restarted after its final checkpoint was saved: report the saved metrics again."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            return False
        metrics = json.loads(path.read_text())
    tune.report(metrics)
    return True


def _report_with_model(metrics: dict[str, Any], pruned: nn.Module, spec_json: str, meta: dict[str, Any]) -> None:
    from ray import tune

    from pruning.structure import ModelSpec, save_checkpoint

    spec = ModelSpec.from_json(spec_json)
    with tempfile.TemporaryDirectory(prefix="prunesweep-") as folder:
        save_checkpoint(Path(folder) / MODEL_FILE, pruned, replace(spec, meta={**spec.meta, "pruning": meta}))
        (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _load_trial_data(settings: TrialSettings):
    from pruning.data import DataConfig, load_data

    return load_data(DataConfig(**settings.data_config))


def sweep_trial(config: dict[str, Any], *, refs: SharedRefs, settings: TrialSettings) -> None:
    """One sweep trial (runs in a Ray worker): plan, check, prune, recover, score, report once."""
    import ray
    from ray import tune

    from search_spaces import SpaceContext, create_search_space

    torch.set_num_threads(settings.threads)
    if _report_restored():
        return
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
                 "infeasible_reason": reason}
        if settings.measure_latency:
            worst["latency_ms"] = base["latency_ms"]
        tune.report(worst)
        return
    spec_json, state = ray.get(refs.model)
    model, _ = _rebuild_model(spec_json, state)
    batches = ray.get(refs.batches)
    splits = _load_trial_data(settings)
    pruned, outcome, metrics = _prune_and_recover(
        model, space, settings.shape, plan.criterion, plan.config, plan.ratio_weights, batches, stats, splits,
        seed=settings.seed, bn_batches=settings.bn_batches, batch_size=settings.batch_size,
        finetune_epochs=plan.finetune_epochs, finetune_lr=plan.finetune_lr, weight_decay=plan.weight_decay,
        finetune_subset=settings.finetune_subset,
    )
    metrics.update(_cost_metrics(pruned, settings.shape, base, settings.measure_latency, settings.threads))
    metrics.update(feasible=1, criterion=plan.criterion)
    meta = {"criterion": plan.criterion, "params": params, "channels": dict(outcome.keep),
            "strategy": settings.strategy, "space": settings.space_name}
    _report_with_model(metrics, pruned, spec_json, meta)


# ---------------------------------------------------------------------------------------------
# Optuna


#: define-by-run contexts by run directory: the SpaceContext stays in the driver and out of the
#: searcher's pickled state (Tune saves the searcher with every experiment snapshot)
_CONTEXTS: dict[str, Any] = {}


class DefineByRun:
    """The define-by-run function handed to ``OptunaSearch``: ``space.define(trial, context)``.

    Returns two bookkeeping constants that Tune adds to the trial's config: ``_trial_number``
    (Optuna's trial number, which names the MLflow run) and, for trials selected with
    ``inject_failures``, ``_inject_failure``.
    """

    def __init__(self, space_name: str, space_options: Mapping[str, Any], key: str,
                 inject_failures: Collection[int] = ()) -> None:
        self.space_name = space_name
        self.space_options = dict(space_options)
        self.key = key
        self.inject_failures = tuple(sorted(set(inject_failures)))
        self._space = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_space": None}

    def __call__(self, trial) -> dict[str, Any]:
        from search_spaces import create_search_space

        if self._space is None:
            self._space = create_search_space(self.space_name, **self.space_options)
        context = _CONTEXTS.get(self.key)
        if context is None:
            raise RuntimeError(f"no search-space context registered for {self.key}")
        self._space.define(trial, context)
        extra: dict[str, Any] = {"_trial_number": trial.number}
        if trial.number in self.inject_failures:
            extra["_inject_failure"] = True
        return extra


def make_sampler(name: str, seed: int, population_size: int | None = None):
    """The Optuna sampler of ``sweep.sampler``."""
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size or 50)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        sampler_class = getattr(optuna.samplers, "GPSampler", None)
        if sampler_class is None:
            raise ConfigError("sweep.sampler", f"gp needs optuna >= 3.6 (installed: {optuna.__version__})")
        try:
            return sampler_class(seed=seed)
        except ImportError as err:
            raise ConfigError("sweep.sampler", f"gp is unavailable: {err}") from None
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError("sweep.sampler", f"unknown sampler {name!r}")


# ---------------------------------------------------------------------------------------------
# Ray and Tune plumbing


def _check_reachable(tracking_uri: str) -> None:
    """Inside a private network (``--ray-network private``) only this machine's loopback answers:
    refuse a remote MLflow server before anything runs rather than fail at the first log call."""
    if not private_network.active():
        return
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme == "sqlite" or parts.hostname in private_network.LOOPBACK_HOSTS:
        return
    raise ConfigError("tracking.uri", f"{tracking_uri!r} cannot be reached from the private loopback-only network "
                      "that Ray runs in; pass --ray-network host or log to a local server or sqlite file")


@contextlib.contextmanager
def _ray(address: str | None, progress: bool) -> Iterator[None]:
    """Join ``address``, or start Ray locally, unless it is already initialised (then reuse it);
    a Ray started here is shut down on exit."""
    import ray

    from orchestrator.distributed.core import connect

    connection = connect(address, log_to_driver=progress)
    try:
        yield
    finally:
        if connection.started:
            ray.shutdown()


@contextlib.contextmanager
def _tune_environment(progress: bool) -> Iterator[None]:
    """Frequent experiment snapshots; Tune's console output on stderr (stdout stays clean)."""
    previous = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = previous or SNAPSHOT_PERIOD_S
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if previous is None:
            os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _finished_cleanly(results, expected: int) -> bool:
    """All ``expected`` trials were created and ended (terminated or errored): not interrupted."""
    return len(results) >= expected and results.num_terminated + results.num_errors >= len(results)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class SweepResult:
    """A sweep's outcome, from the run or read back from MLflow (``prunesweep pareto``)."""

    name: str
    run_dir: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    objectives: dict[str, str]
    baseline: dict[str, float]
    trials: list[TrialRecord]
    front: list[dict[str, Any]]
    hypervolume: float | None = None
    complete: bool = True

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def counts(self) -> dict[str, int]:
        finished = [t for t in self.trials if t.status == "FINISHED"]
        feasible = [t for t in finished if t.metrics.get("feasible", 1.0) >= 0.5]
        return {"trials": len(self.trials), "finished": len(finished), "feasible": len(feasible),
                "failed": sum(t.status == "FAILED" for t in self.trials), "front": len(self.front)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "run_dir": self.run_dir, "tracking_uri": self.tracking_uri,
            "experiment": self.experiment, "parent_run_id": self.parent_run_id,
            "objectives": self.objectives, "baseline": self.baseline, "counts": self.counts(),
            "hypervolume": self.hypervolume, "complete": self.complete, "front": self.front,
            "trials": [asdict(t) for t in self.trials], "mlflow_ui": self.ui_command,
        }

    def front_columns(self) -> list[str]:
        cost = [k for k in ("macs", "params", "latency_ms") if k in self.objectives or k == "macs"]
        return ["trial", "criterion", "accuracy", "test_accuracy", *cost, "macs_reduction", "bn_accuracy"]

    def text(self) -> str:
        counts = self.counts()
        lines = [
            f"sweep {self.name}: {counts['trials']} trials ({counts['finished']} finished, "
            f"{counts['feasible']} feasible, {counts['failed']} failed)"
            + ("" if self.complete else " - INTERRUPTED, resume with: prunesweep sweep --resume " + self.run_dir),
            "baseline: " + ", ".join(f"{k} {_fmt(v)}" for k, v in self.baseline.items()),
            f"Pareto front over {', '.join(f'{k} ({v})' for k, v in self.objectives.items())}: {len(self.front)} trial(s)"
            + (f", hypervolume {self.hypervolume:.6g}" if self.hypervolume is not None else ""),
        ]
        if self.front:
            columns = self.front_columns()
            lines.append(format_table([[row.get(c, "") for c in columns] for row in self.front], columns))
        lines.append(f"MLflow: {self.ui_command}   (parent run {self.parent_run_id})")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _point(record: TrialRecord) -> dict[str, Any]:
    point: dict[str, Any] = dict(record.metrics)
    point["feasible"] = record.metrics.get("feasible", 1.0) >= 0.5
    point["trial"] = record.name
    point["trial_id"] = record.trial_id
    point["criterion"] = record.tags.get("criterion") or record.params.get("criterion", "")
    return point


def _front(records: Sequence[TrialRecord], objectives: Mapping[str, str]) -> tuple[list[TrialRecord], list[dict], list[int]]:
    """Finished trials, their points, and the indices of the Pareto-optimal feasible ones."""
    from orchestrator.sweeps.front import pareto_front

    finished = [r for r in records if r.status == "FINISHED"]
    points = [_point(r) for r in finished]
    front = pareto_front(points, objectives)
    first = next((k for k in objectives if k != "accuracy"), "macs")
    front.sort(key=lambda i: (points[i].get(first, math.inf), -points[i].get("accuracy", 0.0)))
    return finished, points, front


def _front_row(record: TrialRecord, point: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in point.items() if k != "feasible"}
    row["run_id"] = record.run_id
    row["checkpoint"] = record.checkpoint
    row["params"] = dict(record.params)
    return row


def _evaluate_checkpoint(path: str, splits) -> float:
    from pruning.structure import load_checkpoint
    from pruning.data import make_loader
    from pruning.training import evaluate

    model, _ = load_checkpoint(path)
    return evaluate(model, make_loader(splits.test, EVAL_BATCH, shuffle=False)).accuracy


def _finalize_sweep(tracker: Tracker, config: SweepConfig, setup: BaselineSetup, complete: bool,
                    progress: bool) -> SweepResult:
    """Front over the logged trials; test accuracy of the front only; table, plot, checkpoints."""
    from orchestrator.sweeps.front import front_table, hypervolume, plot_front

    objectives = config.objectives
    records = tracker.read_trials()
    finished, points, front = _front(records, objectives)
    parent = tracker.parent_run_id
    rows = []
    on_front = set(front)
    _say(progress and bool(front), f"evaluating the {len(front)} Pareto-optimal model(s) on the test split")
    for i in front:
        record, point = finished[i], points[i]
        model_file = Path(record.checkpoint or "") / MODEL_FILE
        if record.checkpoint and model_file.is_file():
            point["test_accuracy"] = _evaluate_checkpoint(str(model_file), setup.splits)
            tracker.log_metrics(record.run_id, {"test_accuracy": point["test_accuracy"]})
            tracker.log_file_as(parent, model_file, f"pareto/checkpoints/{record.name}.pt")
        rows.append(_front_row(record, point))
    for i, record in enumerate(finished):
        tracker.set_tags(record.run_id, {TAG_PARETO: str(i in on_front).lower()})
    reference = {k: (0.0 if d == "max" else setup.metrics.get(k, math.nan)) for k, d in objectives.items()}
    volume = hypervolume(points, objectives, reference) if all(math.isfinite(v) for v in reference.values()) else None
    baseline_point = {k: setup.metrics[k] for k in ("accuracy", "macs", "params", "latency_ms") if k in setup.metrics}
    x = next((k for k in objectives if k != "accuracy"), "macs")
    columns = ["trial", "criterion", *objectives, "test_accuracy", "macs_reduction", "bn_accuracy"]
    columns = list(dict.fromkeys(columns))
    with tempfile.TemporaryDirectory(prefix="prunesweep-front-") as folder:
        png = plot_front(points, objectives, front, baseline_point, Path(folder) / "front.png", x=x, y="accuracy")
        tracker.log_file(parent, png, "pareto")
    tracker.log_text(parent, front_table(points, front, columns), "pareto/front.md")
    tracker.log_text(parent, json.dumps({"objectives": objectives, "baseline": setup.metrics, "front": rows,
                                         "hypervolume": volume}, indent=2, default=str), "pareto/front.json")
    summary = {"pareto_size": len(front), "trials_finished": len(finished),
               "trials_failed": sum(r.status == "FAILED" for r in records),
               "trials_feasible": sum(p["feasible"] for p in points)}
    if volume is not None:
        summary["hypervolume"] = volume
    for row in rows:
        if "test_accuracy" in row:
            summary[f"pareto.{row['trial']}.test_accuracy"] = row["test_accuracy"]
    tracker.log_metrics(parent, summary)
    tracker.finish_parent("FINISHED" if complete else "KILLED")
    return SweepResult(
        name=config.name, run_dir=config.run_dir, tracking_uri=config.tracking_uri,
        experiment=config.tracking.experiment, parent_run_id=parent, objectives=objectives,
        baseline=dict(setup.metrics), trials=records, front=rows, hypervolume=volume, complete=complete,
    )


# ---------------------------------------------------------------------------------------------
# run / resume a sweep


def _baseline_extras(config: SweepConfig, setup: BaselineSetup, progress: bool):
    """Statistics and utilization curves: computed once, kept in ``<run_dir>/baseline/``."""
    from pruning.statistics import ActivationStats

    space = config.space.create()
    folder = Path(config.run_dir) / "baseline"
    needs, chip = _needs_stats(space.criteria, config.space.name)
    stats = utilization = None
    if needs:
        path = folder / "stats.pt"
        if path.is_file():
            stats = ActivationStats.load(path)
        else:
            _say(progress, f"computing activation statistics on {sum(len(y) for _, y in setup.batches)} calibration images")
            stats = compute_baseline_statistics(setup.model, setup.space, setup.batches, chip=chip, progress=progress,
                                                workers=config.sweep.concurrency,
                                                cpus_per_worker=config.sweep.cpus_per_trial)
            folder.mkdir(parents=True, exist_ok=True)
            stats.save(path)
    if config.space.name == "snpfi":
        path = folder / "utilization.pt"
        if path.is_file():
            utilization = torch.load(path, weights_only=True)
        else:
            _say(progress, "computing SNPFI utilization curves")
            utilization = compute_utilization_curves(setup.model, setup.space, config.space.strategy, setup.batches,
                                                     seed=config.sweep.seed)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "utilization.pt.tmp"
            torch.save(utilization, tmp)
            os.replace(tmp, path)
    return stats, utilization


def _check_run_dir(config: SweepConfig, resume: bool) -> Path:
    from ray import tune

    experiment = Path(config.run_dir) / "tune"
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError("resume", f"{config.run_dir} holds no sweep to resume (no {experiment})")
    elif experiment.exists():
        raise ConfigError(
            "run_dir", f"{config.run_dir} already holds a sweep: resume it with "
            f"`prunesweep sweep --resume {config.run_dir}` or choose another run_dir"
        )
    return experiment


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    inject_failures: Collection[int] = (),
) -> SweepResult:
    """Run (or, with ``resume``, continue) the sweep ``config``; see the module docstring.

    ``address``: a Ray cluster to join (default: the running Ray, else a local one).
    ``inject_failures``: Optuna trial numbers whose trial raises :class:`InjectedFailure` before
    doing anything (to exercise failure handling; recorded as FAILED like any crash).
    Bad input raises ``ValueError`` subclasses before any trial starts.
    """
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import SpaceContext

    experiment_dir = _check_run_dir(config, resume)
    _check_reachable(config.tracking_uri)
    if not Path(config.checkpoint).is_file():
        raise ConfigError("checkpoint", f"file {config.checkpoint!r} does not exist")
    objectives = config.objectives
    config.space.create()  # bad space options fail before anything loads
    make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size)  # fails early
    threads = max(1, int(config.sweep.cpus_per_trial))
    _say(progress, f"loading baseline {config.checkpoint}")
    setup = prepare_baseline(config.checkpoint, config.data, latency="latency_ms" in objectives, threads=threads,
                             progress=progress)
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    if not resume:
        (Path(config.run_dir) / RESOLVED_CONFIG_FILE).write_text(dump_sweep_config(config))
    with _ray(address, progress):
        stats, utilization = _baseline_extras(config, setup, progress)
        context = SpaceContext(space=setup.space, strategy=config.space.strategy, stats=stats, utilization=utilization)

        tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind="sweep")
        parent, created = tracker.start_parent(
            config.name,
            params=flatten(config.to_dict()),
            tags={TAG_SWEEP: config.name, TAG_COMMIT: git_commit(), "prunesweep.space": config.space.name},
            texts={"config/sweep.yaml": dump_sweep_config(config)},
            reuse=resume,
        )
        if created:
            tracker.log_metrics(parent, {f"baseline_{k}": v for k, v in setup.metrics.items()})
        _say(progress, f"MLflow parent run {parent} in {config.tracking_uri}" + ("" if created else " (resumed)"))

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        key = str(Path(config.run_dir).absolute())
        _CONTEXTS[key] = context
        try:
            with _tune_environment(progress):
                refs = _put_shared(setup, stats, utilization)
                settings = TrialSettings(
                    data_config=asdict(setup.data_config), shape=setup.shape, bn_batches=config.data.bn_batches,
                    batch_size=config.data.batch_size, finetune_subset=config.data.finetune_subset,
                    seed=config.sweep.seed, threads=threads, baseline=dict(setup.metrics),
                    measure_latency="latency_ms" in objectives, space_name=config.space.name,
                    space_options=dict(config.space.options), strategy=config.space.strategy,
                )
                trainable = tune.with_resources(
                    functools.partial(sweep_trial, refs=refs, settings=settings), {"cpu": config.sweep.cpus_per_trial}
                )
                if resume:
                    _say(progress, f"resuming {experiment_dir}")
                    tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_errored=True)
                else:
                    metric = list(objectives) if len(objectives) > 1 else next(iter(objectives))
                    mode = list(objectives.values()) if len(objectives) > 1 else next(iter(objectives.values()))
                    search = OptunaSearch(
                        space=DefineByRun(config.space.name, config.space.options, key, inject_failures),
                        metric=metric, mode=mode,
                        sampler=make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size),
                    )
                    callback = MlflowTrialLogger(
                        config.tracking_uri, config.tracking.experiment, config.run_dir, kind="sweep",
                        metric_names=TRIAL_METRICS, tag_names=TRIAL_TAGS,
                    )
                    tuner = tune.Tuner(
                        trainable,
                        tune_config=tune.TuneConfig(search_alg=search, num_samples=config.sweep.trials,
                                                    max_concurrent_trials=config.sweep.concurrency),
                        run_config=tune.RunConfig(
                            storage_path=str(Path(config.run_dir).absolute()), name="tune", callbacks=[callback],
                            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                            verbose=1 if progress else 0,
                        ),
                    )
                results = tuner.fit()
        except BaseException:
            with contextlib.suppress(Exception):
                tracker.finish_parent("FAILED")
            raise
        finally:
            _CONTEXTS.pop(key, None)
        complete = _finished_cleanly(results, config.sweep.trials)
        return _finalize_sweep(tracker, config, setup, complete, progress)


def resume_sweep(run_dir: str | os.PathLike, *, address: str | None = None, progress: bool = True) -> SweepResult:
    """Continue the interrupted sweep in ``run_dir`` with the config it recorded."""
    path = Path(run_dir).absolute() / RESOLVED_CONFIG_FILE
    if not path.is_file():
        raise ConfigError("resume", f"{Path(run_dir).absolute()} holds no sweep to resume (no {RESOLVED_CONFIG_FILE})")
    return run_sweep(load_sweep_config(path), address=address, resume=True, progress=progress)


def read_front(run_dir: str | os.PathLike, *, tracking_uri: str | None = None) -> SweepResult:
    """The sweep of ``run_dir`` read back from MLflow: trials, front (recomputed from the logged
    metrics over feasible finished trials) with the test accuracy logged for it."""
    from orchestrator.sweeps.front import hypervolume

    run_dir = str(Path(run_dir).absolute())
    config_path = Path(run_dir) / RESOLVED_CONFIG_FILE
    saved = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    uri = tracking_uri or (saved.get("tracking") or {}).get("uri") or default_tracking_uri(run_dir)
    if tracking_uri is not None:
        TrackingSettings.from_dict({"uri": tracking_uri})  # same checks as a config's
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError("tracking_uri", f"no MLflow database at {uri[len('sqlite:///'):]}")
    experiment = (saved.get("tracking") or {}).get("experiment", "prunesweep")
    tracker = Tracker(uri, experiment, run_dir, kind="sweep")
    parent = tracker.find_parent(all_experiments=True)
    if parent is None:
        raise ConfigError("run_dir", f"no sweep of {run_dir} in {uri}")
    run = tracker.client.get_run(parent)
    params = run.data.params
    objectives = {k.split(".", 2)[2]: v for k, v in params.items() if k.startswith("sweep.objectives.")}
    objectives = objectives or {"accuracy": "max", "macs": "min"}
    baseline = {k[len("baseline_"):]: v for k, v in run.data.metrics.items() if k.startswith("baseline_")}
    records = tracker.read_trials()
    finished, points, front = _front(records, objectives)
    rows = [_front_row(finished[i], points[i]) for i in front]
    reference = {k: (0.0 if d == "max" else baseline.get(k, math.nan)) for k, d in objectives.items()}
    volume = hypervolume(points, objectives, reference) if all(math.isfinite(v) for v in reference.values()) else None
    return SweepResult(
        name=run.data.tags.get(TAG_SWEEP, run.info.run_name or ""), run_dir=run_dir, tracking_uri=uri,
        experiment=experiment, parent_run_id=parent, objectives=objectives, baseline=baseline,
        trials=records, front=rows, hypervolume=volume, complete=run.info.status == "FINISHED",
    )


# ---------------------------------------------------------------------------------------------
# compare: a fixed grid, no search


def compare_trial(config: dict[str, Any], *, refs: SharedRefs, settings: TrialSettings) -> None:
    """One grid cell: criterion x FLOPs target x seed; reports calibration and test accuracy."""
    import ray
    from ray import tune

    from pruning.data import make_loader
    from pruning.planning import PruningConfig
    from pruning.training import evaluate

    torch.set_num_threads(settings.threads)
    spec_json, state = ray.get(refs.model)
    model, _ = _rebuild_model(spec_json, state)
    space = ray.get(refs.space)
    stats = ray.get(refs.stats) if refs.stats is not None else None
    splits = _load_trial_data(settings)
    pruning_config = PruningConfig(strategy=settings.strategy, allocation="uniform",
                                   flops_reduction=float(config["flops_reduction"]))
    pruned, _, metrics = _prune_and_recover(
        model, space, settings.shape, config["criterion"], pruning_config, None, ray.get(refs.batches), stats, splits,
        seed=int(config["seed"]), bn_batches=settings.bn_batches, batch_size=settings.batch_size,
        finetune_epochs=settings.finetune_epochs, finetune_lr=settings.finetune_lr,
        weight_decay=settings.weight_decay, finetune_subset=settings.finetune_subset,
    )
    metrics.update(_cost_metrics(pruned, settings.shape, settings.baseline, False, settings.threads))
    metrics["test_accuracy"] = evaluate(pruned, make_loader(splits.test, EVAL_BATCH, shuffle=False)).accuracy
    metrics["criterion"] = config["criterion"]
    tune.report(metrics)


@dataclass
class CompareResult:
    name: str
    run_dir: str
    tracking_uri: str
    parent_run_id: str
    baseline: dict[str, float]
    rows: list[dict[str, Any]]
    trials: list[TrialRecord]

    COLUMNS = ("criterion", "flops_reduction", "n", "failed", "test_accuracy_mean", "test_accuracy_std",
               "accuracy_mean", "accuracy_std", "macs_reduction_mean")

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def table(self) -> str:
        return format_table([[row.get(c, "") for c in self.COLUMNS] for row in self.rows], self.COLUMNS)

    def text(self) -> str:
        return (f"compare {self.name}: {len(self.trials)} runs; baseline test accuracy "
                f"{self.baseline.get('test_accuracy', float('nan')):.4f}\n{self.table()}\n"
                f"MLflow: {self.ui_command}   (parent run {self.parent_run_id})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": self.run_dir, "tracking_uri": self.tracking_uri,
                "parent_run_id": self.parent_run_id, "baseline": self.baseline, "rows": self.rows,
                "trials": [asdict(t) for t in self.trials], "mlflow_ui": self.ui_command}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _compare_rows(config: CompareConfig, records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    rows = []
    for criterion in config.criteria:
        for target in config.flops_reductions:
            cell = [r for r in records if r.params.get("criterion") == criterion
                    and math.isclose(float(r.params.get("flops_reduction", "nan")), target)]
            done = [r for r in cell if r.status == "FINISHED"]
            row: dict[str, Any] = {"criterion": criterion, "flops_reduction": target, "n": len(done),
                                   "failed": sum(r.status == "FAILED" for r in cell)}
            for metric in ("test_accuracy", "accuracy", "macs_reduction", "bn_accuracy"):
                mean, std = _mean_std([r.metrics[metric] for r in done if metric in r.metrics])
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            rows.append(row)
    return rows


def _plot_compare(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, float], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        cells = [r for r in rows if r["criterion"] == criterion and r["test_accuracy_mean"] is not None]
        if cells:
            ax.errorbar([r["flops_reduction"] for r in cells], [r["test_accuracy_mean"] for r in cells],
                        yerr=[r["test_accuracy_std"] for r in cells], marker="o", capsize=3, label=criterion)
    if "test_accuracy" in baseline:
        ax.axhline(baseline["test_accuracy"], color="0.5", linestyle="--", label="unpruned")
    ax.set_xlabel("FLOPs (MACs) reduction target")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def run_compare(config: CompareConfig, *, address: str | None = None, progress: bool = True) -> CompareResult:
    """Run the criterion x FLOPs-target x seed grid as Tune trials; log a table and a plot."""
    from ray import tune

    if not Path(config.checkpoint).is_file():
        raise ConfigError("checkpoint", f"file {config.checkpoint!r} does not exist")
    _check_reachable(config.tracking_uri)
    experiment_dir = Path(config.run_dir) / "tune"
    if experiment_dir.exists():
        raise ConfigError("run_dir", f"{config.run_dir} already holds a comparison; choose another --run-dir or --name")
    threads = max(1, int(config.cpus_per_trial))
    setup = prepare_baseline(config.checkpoint, config.data, threads=threads, progress=progress)
    with _ray(address, progress):
        needs, chip = _needs_stats(config.criteria)
        stats = None
        if needs:
            _say(progress, "computing activation statistics")
            stats = compute_baseline_statistics(setup.model, setup.space, setup.batches, chip=chip, progress=progress,
                                                workers=config.concurrency, cpus_per_worker=config.cpus_per_trial)
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        (Path(config.run_dir) / "compare.yaml").write_text(text)
        tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind="compare")
        parent, _ = tracker.start_parent(config.name, params=flatten(config.to_dict()),
                                         tags={TAG_SWEEP: config.name, TAG_COMMIT: git_commit()},
                                         texts={"config/compare.yaml": text}, reuse=False)
        tracker.log_metrics(parent, {f"baseline_{k}": v for k, v in setup.metrics.items()})
        try:
            with _tune_environment(progress):
                refs = _put_shared(setup, stats, None)
                settings = TrialSettings(
                    data_config=asdict(setup.data_config), shape=setup.shape, bn_batches=config.data.bn_batches,
                    batch_size=config.data.batch_size, finetune_subset=config.data.finetune_subset, seed=0,
                    threads=threads, baseline=dict(setup.metrics), strategy=config.strategy,
                    finetune_epochs=config.finetune_epochs, finetune_lr=config.finetune_lr,
                    weight_decay=config.weight_decay,
                )
                trainable = tune.with_resources(functools.partial(compare_trial, refs=refs, settings=settings),
                                                {"cpu": config.cpus_per_trial})
                callback = MlflowTrialLogger(config.tracking_uri, config.tracking.experiment, config.run_dir,
                                             kind="compare", metric_names=COMPARE_METRICS, tag_names=("criterion",))
                tuner = tune.Tuner(
                    trainable,
                    param_space={"criterion": tune.grid_search(list(config.criteria)),
                                 "flops_reduction": tune.grid_search(list(config.flops_reductions)),
                                 "seed": tune.grid_search(list(config.seeds))},
                    tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=config.concurrency),
                    run_config=tune.RunConfig(
                        storage_path=str(Path(config.run_dir).absolute()), name="tune", callbacks=[callback],
                        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                        verbose=1 if progress else 0,
                    ),
                )
                tuner.fit()
        except BaseException:
            with contextlib.suppress(Exception):
                tracker.finish_parent("FAILED")
            raise
        records = tracker.read_trials()
        rows = _compare_rows(config, records)
        result = CompareResult(config.name, config.run_dir, config.tracking_uri, parent, dict(setup.metrics), rows, records)
        tracker.log_text(parent, result.table() + "\n", "compare/table.txt")
        tracker.log_text(parent, json.dumps(rows, indent=2), "compare/table.json")
        with tempfile.TemporaryDirectory(prefix="prunesweep-compare-") as folder:
            tracker.log_file(parent, _plot_compare(rows, setup.metrics, Path(folder) / "compare.png"), "compare")
        summary = {}
        for row in rows:
            if row["test_accuracy_mean"] is not None:
                summary[f"{row['criterion']}.{row['flops_reduction']:g}.test_accuracy_mean"] = row["test_accuracy_mean"]
        tracker.log_metrics(parent, summary)
        tracker.finish_parent("FINISHED")
        return result
