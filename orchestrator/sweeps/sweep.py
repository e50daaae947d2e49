"""Sweeps: search the accuracy-vs-cost Pareto front with Ray Tune + Optuna, tracked in MLflow.

:func:`run_sweep` runs one sweep from a :class:`~orchestrator.sweeps.config.SweepConfig`:

1. The driver prepares the baseline once (``orchestrator.sweeps.baseline``): checkpoint,
   calibration batches, activation statistics and, for the ``snpfi`` space, utilization curves
   (kept in ``<run_dir>/baseline/`` and reused on resume). The shared objects go into the Ray
   object store once; trials receive the references.
2. Tune runs ``trials`` trials, ``concurrency`` at a time, sampled by Optuna
   (``orchestrator.sweeps.search``). A trial (``orchestrator.sweeps.trials``) builds its plan; an
   infeasible plan is reported at once with the worst objective values and ``feasible=0``.
   Otherwise it prunes the shared baseline, recovers it with the config's recipe (the sampled
   fine-tuning values replacing the recipe's), scores every stage on the CALIBRATION split,
   measures the costs, saves the pruned model as a Tune checkpoint and reports once.
3. The driver logs to MLflow: a parent run with the resolved config, one nested run per trial,
   and at the end the Pareto front (``orchestrator.sweeps.results``).

A crashed trial is recorded as FAILED and the sweep goes on. An interrupted sweep continues with
``run_sweep(config, resume=True)`` / ``prunesweep sweep --resume RUN_DIR``: ``Tuner.restore``
brings back the trials and the Optuna study; finished trials are neither lost nor repeated.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Collection

from orchestrator.sweeps.baseline import load_or_compute_extras, prepare_baseline, say
from orchestrator.sweeps.checks import ConfigError
from orchestrator.sweeps.config import RESOLVED_CONFIG_FILE, SweepConfig, dump_sweep_config, load_sweep_config
from orchestrator.sweeps.results import SweepResult, finalize_sweep
from orchestrator.sweeps.runner import (
    EXPERIMENT_NAME,
    check_tracking_reachable,
    finished_cleanly,
    ray_connection,
    run_trials,
    start_parent_run,
)
from orchestrator.sweeps.search import DefineByRun, make_sampler, register_context
from orchestrator.sweeps.tracking import Tracker
from orchestrator.sweeps.trials import TRIAL_METRICS, TRIAL_TAGS, TrialSettings, sweep_trial
from pruning.utils import atomic_write

__all__ = ["run_sweep", "resume_sweep"]


def _check_run_dir(config: SweepConfig, resume: bool) -> None:
    from ray import tune

    experiment = Path(config.run_dir) / EXPERIMENT_NAME
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError("resume", f"{config.run_dir} holds no sweep to resume (no {experiment})")
    elif experiment.exists():
        raise ConfigError(
            "run_dir", f"{config.run_dir} already holds a sweep: resume it with "
            f"`prunesweep sweep --resume {config.run_dir}` or choose another run_dir"
        )


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
    ``inject_failures``: Optuna trial numbers whose trial raises
    :class:`~orchestrator.sweeps.trials.InjectedFailure` before doing anything (to exercise
    failure handling; recorded as FAILED like any crash).
    Bad input raises ``ValueError`` subclasses before any trial starts.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import SpaceContext

    _check_run_dir(config, resume)
    check_tracking_reachable(config.tracking_uri)
    if not Path(config.checkpoint).is_file():
        raise ConfigError("checkpoint", f"file {config.checkpoint!r} does not exist")
    objectives = config.objectives
    space = config.space.create()  # bad space options fail before anything loads
    make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size)  # fails early
    threads = max(1, int(config.sweep.cpus_per_trial))
    say(progress, f"loading baseline {config.checkpoint}")
    setup = prepare_baseline(config.checkpoint, config.data, latency="latency_ms" in objectives, threads=threads,
                             progress=progress)
    text = dump_sweep_config(config)
    if not resume:
        atomic_write(Path(config.run_dir) / RESOLVED_CONFIG_FILE, lambda tmp: tmp.write_text(text))
    with ray_connection(address, progress):
        stats, utilization = load_or_compute_extras(
            setup, Path(config.run_dir) / "baseline", criteria=space.criteria, space_name=config.space.name,
            strategy=config.space.strategy, workers=config.sweep.concurrency,
            cpus_per_worker=config.sweep.cpus_per_trial, seed=config.sweep.seed, progress=progress,
        )
        context = SpaceContext(space=setup.space, strategy=config.space.strategy, stats=stats, utilization=utilization)
        tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind="sweep")
        parent, created = start_parent_run(
            tracker, config.name, config.to_dict(), {"config/sweep.yaml": text}, baseline=setup.metrics,
            tags={"prunesweep.space": config.space.name}, reuse=resume,
        )
        say(progress, f"MLflow parent run {parent} in {config.tracking_uri}" + ("" if created else " (resumed)"))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        key = str(Path(config.run_dir).absolute())
        settings = TrialSettings(
            data_config=asdict(setup.data_config), shape=setup.shape, seed=config.sweep.seed, threads=threads,
            baseline=dict(setup.metrics), recipe=config.recipe, measure_latency="latency_ms" in objectives,
            space_name=config.space.name, space_options=dict(config.space.options), strategy=config.space.strategy,
        )

        def make_search():
            many = len(objectives) > 1
            return OptunaSearch(
                space=DefineByRun(config.space.name, config.space.options, key, inject_failures),
                metric=list(objectives) if many else next(iter(objectives)),
                mode=list(objectives.values()) if many else next(iter(objectives.values())),
                sampler=make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size),
            )

        say(progress and resume, f"resuming {Path(config.run_dir) / EXPERIMENT_NAME}")
        with register_context(key, context):
            results = run_trials(
                tracker, sweep_trial, settings, setup, stats=stats, utilization=utilization,
                cpus_per_trial=config.sweep.cpus_per_trial, concurrency=config.sweep.concurrency,
                metric_names=TRIAL_METRICS, tag_names=TRIAL_TAGS, num_samples=config.sweep.trials,
                make_search=make_search, resume=resume, progress=progress,
            )
        return finalize_sweep(tracker, config, setup, finished_cleanly(results, config.sweep.trials), progress)


def resume_sweep(run_dir: str | os.PathLike, *, address: str | None = None, progress: bool = True) -> SweepResult:
    """Continue the interrupted sweep in ``run_dir`` with the config it recorded."""
    path = Path(run_dir).absolute() / RESOLVED_CONFIG_FILE
    if not path.is_file():
        raise ConfigError("resume", f"{Path(run_dir).absolute()} holds no sweep to resume (no {RESOLVED_CONFIG_FILE})")
    return run_sweep(load_sweep_config(path), address=address, resume=True, progress=progress)
