"""Sweeps: search the task-metric-vs-cost Pareto front with Ray Tune + Optuna, tracked in MLflow.

:func:`run_sweep` runs one sweep from a :class:`~orchestrator.sweeps.config.SweepConfig`:

1. The driver prepares the baseline once (``orchestrator.experiment.baseline``): checkpoint,
   calibration batches, activation statistics and, for the ``snpfi`` space, utilization curves
   (kept in ``<run_dir>/baseline/`` and reused on resume). The shared objects go into the Ray
   object store once; trials receive the references.
2. Tune runs ``trials`` trials, ``concurrency`` at a time, sampled by Optuna
   (``orchestrator.sweeps.search``); the first ones are the space's warm starts (its one-shot
   schedules, ``SearchSpace.warm_starts``, enqueued through ``points_to_evaluate``). A trial (``orchestrator.sweeps.trials``) builds its plan; an
   infeasible plan is reported at once with the worst objective values and ``feasible=0``.
   Otherwise it prunes the shared baseline, recovers it with the config's recipe (the sampled
   fine-tuning values replacing the recipe's), scores every stage on the CALIBRATION split,
   measures the costs, saves the pruned model as a Tune checkpoint and reports once.
3. Two-stage sweeps (``sweep.refine``): step 2 is the screening stage (no fine-tuning); then
   ``candidates`` screening trials spread over its Pareto front (``orchestrator.sweeps.refine``)
   run again with the refinement recipe as a second Tune experiment (``<run_dir>/tune-refine``).
4. The driver logs to MLflow: a parent run with the resolved config, one nested run per trial
   (tagged with its stage), and at the end the Pareto front (``orchestrator.sweeps.results``),
   over the refined trials only in a two-stage sweep.

A crashed trial is recorded as FAILED and the sweep goes on. An interrupted sweep continues with
``run_sweep(config, resume=True)`` / ``prunesweep sweep --resume RUN_DIR``: ``Tuner.restore``
brings back the trials and the Optuna study; finished trials are neither lost nor repeated. A
two-stage sweep resumes the stage it was in: screening (then refinement), or refinement alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from orchestrator.experiment.baseline import (
    StatsWorkers, load_or_compute_statistics, load_or_compute_utilization, needs_statistics, prepare_baseline, say,
)
from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.experiment import Experiment, ExperimentSpec, check_cluster_cpus
from orchestrator.experiment.fixed_configs import FixedConfigs
from orchestrator.experiment.relocation import load_recorded_config
from orchestrator.experiment.runner import (
    EXPERIMENT_NAME, TrialOutput, TrialResources, TrialsSpec, finished_cleanly, run_trials,
)
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta, plain_config, split_config, typed_config
from orchestrator.experiment.worker import WorkerSettings, put_shared, step_metric_pattern, trial_threads
from orchestrator.sweeps.config import RESOLVED_CONFIG_FILE, SweepConfig, load_sweep_config
from orchestrator.sweeps.latency import check_runtime, load_or_build_table
from orchestrator.sweeps.refine import (
    CANDIDATES_FILE, REFINE_EXPERIMENT, STAGE_REFINE, STAGE_SCREEN, refine_variants, select_candidates,
)
from orchestrator.sweeps.results import SweepResult, finalize_sweep
from orchestrator.sweeps.search import DefineByRun, make_sampler, register_context
from orchestrator.sweeps.objectives import check_task_named
from orchestrator.sweeps.trials import TRIAL_TAGS, SweepTrialSettings, sweep_trial, trial_metrics
from pruning.utils import atomic_write

__all__ = ["run_sweep", "resume_sweep", "screening_search", "refine_configs", "CANDIDATES_FILE"]

#: bytes of a float32 weight: a trial's checkpoint is about the baseline's parameters times this
FLOAT_BYTES = 4


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> SweepResult:
    """Run (or, with ``resume``, continue) the sweep ``config``; see the module docstring.

    ``address``: a Ray cluster to join (default: the running Ray, else a local one).
    ``progress``: one line per ended trial on stderr; ``verbose``: Tune's own status output too.
    Bad input raises ``ValueError`` subclasses before any trial starts.
    """
    import optuna

    from search_spaces import SpaceContext

    if config.sweep.latency is not None:  # a runtime missing here: one line before anything is written
        check_runtime(config.sweep.latency)
    spec = ExperimentSpec.of("sweep", config, RESOLVED_CONFIG_FILE)
    with Experiment.open(spec, resume, [config.source]) as experiment:  # the run dir's lock, held to the end
        search_space = config.space.create()  # the sweep's one search space: its searcher's, its trials'
        sampler = make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size)  # fails early
        resources = TrialResources(config.sweep.cpus_per_trial, config.sweep.gpus_per_trial, config.sweep.concurrency)
        say(progress, f"loading baseline {config.checkpoint or config.model.name}")
        phases: dict[str, float] = {}  # wall seconds of this run's phases (SweepResult.phases)
        with timed(phases, "baseline"):
            setup = prepare_baseline(config.source, config.data, task=config.task, progress=progress)
        check_task_named(config.task_spec, setup.task_spec)
        check_reachable(config, search_space, setup.space)
        experiment.record()
        with experiment.connect(address, verbose, config.gpu_requests()):
            check_cluster_cpus(resources, "sweep")
            with timed(phases, "extras"):  # statistics / utilization curves (read back on a resume)
                stats, utilization = _extras(config, search_space, setup, progress)
            table = None
            if config.sweep.latency is not None:
                with timed(phases, "latency_table"):
                    table = load_or_build_table(setup, Path(config.run_dir) / "baseline", config.sweep.latency,
                                                progress)
                setup.metrics["latency_ms"] = table.baseline_ms
            context = SpaceContext(space=setup.space, strategy=config.space.strategy, stats=stats,
                                   utilization=utilization)
            parent, created = experiment.start(baseline=setup.metrics, setups=[setup], gpus_per_trial=resources.gpus,
                                               tags={"prunesweep.space": config.space.name})
            say(progress, f"MLflow parent run {parent} in {config.tracking_uri}" + ("" if created else " (resumed)"))
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            key = experiment.tracker.move.recorded  # where the sweep started: the key its restored searcher holds
            settings = SweepTrialSettings(
                WorkerSettings.of(setup, trial_threads(resources.cpus)), space=search_space, strategy=config.space.strategy,
                seed=config.sweep.seed, recipe=config.screen_recipe if config.two_stage else config.recipe,
                latency_table=table, sampled_finetune=not config.two_stage, score_every_stage=not config.two_stage,
            )
            screening = TrialsSpec(
                sweep_trial, settings, put_shared(setup, stats, utilization, settings.recipe), resources,
                config.sweep.trials,
                make_search=lambda: screening_search(config, search_space, context, key, sampler),
                folder=EXPERIMENT_NAME, stage=STAGE_SCREEN,
                trial_bytes=FLOAT_BYTES * int(setup.metrics["params"]),  # a pruned checkpoint is smaller
            )
            output = TrialOutput(trial_metrics(setup.task), TRIAL_TAGS, progress=progress, verbose=verbose,
                                 metric_patterns=(step_metric_pattern(setup.task.primary),), score=setup.task.primary)
            tracker = experiment.tracker
            refining = config.two_stage and resume and _restorable(config, REFINE_EXPERIMENT)
            with register_context(key, context):
                if refining:  # killed during refinement: screening is done
                    say(progress, f"resuming {Path(config.run_dir) / REFINE_EXPERIMENT}")
                    with timed(phases, "refinement"):
                        complete = _refine(config, tracker, screening, output, None)
                else:
                    say(progress and resume, f"resuming {Path(config.run_dir) / EXPERIMENT_NAME}")
                    with timed(phases, "screening"):
                        screened = run_trials(tracker, screening, output, resume=resume)
                    complete = finished_cleanly(screened, config.sweep.trials)
                    if config.two_stage and complete:
                        with timed(phases, "refinement"):
                            complete = _refine(config, tracker, screening, output, screened)
            result = finalize_sweep(tracker, config, setup, complete, progress, phases, table)
        return replace(result, stopped_by=experiment.termination.name)


def check_reachable(config: SweepConfig, search_space, pruning_space) -> None:
    """Refuse a FLOPs range of the search space whose low end the model cannot reach (at most
    ``grid.cap`` of each layer's channels removed, widths multiples of ``round_to``, the most
    reaching of its choices where it is searched): every trial would be infeasible. Names the key
    at fault."""
    from pruning.planning import FLOPS_TOLERANCE, reachable_reduction
    from pruning.planning.widths import WidthGrid

    groups = pruning_space.select(config.space.strategy)
    # the smallest multiple reaches furthest where the choices divide each other (1, 8, 16);
    # the maximum also covers choices that do not (8 and 12)
    most = max(reachable_reduction(pruning_space, groups, WidthGrid(round_to=r)) for r in search_space.round_to_choices)
    ranges = {"flops_bounds": search_space.flops_bounds}
    if getattr(search_space, "flops_reduction", None) is not None:
        ranges["flops_reduction"] = search_space.flops_reduction
    for key, (low, _) in ranges.items():
        if low > most + FLOPS_TOLERANCE / 2:
            raise ConfigError(f"space.{key}", f"starts at {low:g} but this model can lose at most {most:.3f} of its "
                              f"MACs ({len(groups)} prunable layers, strategy {config.space.strategy}); lower it")


def _extras(config: SweepConfig, search_space, setup, progress: bool):
    """(activation statistics, utilization curves) of the baseline, each None where the space
    does not read it; kept in ``<run_dir>/baseline``."""
    folder = Path(config.run_dir) / "baseline"
    needs, optional = needs_statistics(search_space.criteria, search_space.needs_stats)
    workers = StatsWorkers(config.sweep.concurrency, config.sweep.cpus_per_trial,
                           config.sweep.gpus_per_worker).within_cluster()
    stats = load_or_compute_statistics(setup, folder, workers, optional, progress) if needs else None
    utilization = (load_or_compute_utilization(setup, folder, config.space.strategy, seed=config.sweep.seed,
                                               progress=progress) if search_space.needs_utilization else None)
    return stats, utilization


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall seconds to ``phases[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def _restorable(config: SweepConfig, name: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(str(Path(config.run_dir) / name))


def screening_search(config: SweepConfig, search_space, context, key: str, sampler=None):
    """The screening stage's searcher: Optuna (``sampler``: the config's, made here where not
    given), with the space's warm starts enqueued first."""
    from ray.tune.search.optuna import OptunaSearch

    objectives = config.objectives
    many = len(objectives) > 1
    warm = search_space.warm_starts(context)[:config.sweep.trials] if config.sweep.warm_start else []
    return OptunaSearch(
        space=DefineByRun(search_space, key),
        metric=list(objectives) if many else next(iter(objectives)),
        mode=list(objectives.values()) if many else next(iter(objectives.values())),
        sampler=sampler or make_sampler(config.sweep.sampler, config.sweep.seed, config.sweep.population_size),
        points_to_evaluate=warm or None,
    )


def _refine(config: SweepConfig, tracker, screening: TrialsSpec, output: TrialOutput, screened) -> bool:
    """The refinement stage: ``sweep.refine.candidates`` screening trials (from ``screened``, a
    ResultGrid, told apart by the space's plan parameters; None: resume the refinement
    experiment) with the refinement recipe, each once per step count ``sweep.refine.recipe.steps``
    lists, run like ``screening`` but for what differs. The refined trials' configs are written
    to ``CANDIDATES_FILE`` first, and a resume runs those. Returns whether every refined trial ended."""
    folder = Path(config.run_dir) / REFINE_EXPERIMENT
    chosen_file = Path(config.run_dir) / CANDIDATES_FILE
    resume = screened is None
    settings = screening.settings
    if resume:
        configs = [typed_config(c) for c in json.loads(chosen_file.read_text())]
    else:
        configs = refine_configs(screened, config.objectives, config.sweep.refine.candidates,
                                 config.sweep.refine.targets, config.sweep.refine.per_target,
                                 plan_params=settings.space.plan_params)
        configs = per_variant(configs, refine_variants(config.sweep.refine))
        text = json.dumps([plain_config(c) for c in configs], indent=2)
        atomic_write(chosen_file, lambda tmp: tmp.write_text(text))
        if folder.exists():  # started, but killed before Tune's first snapshot: nothing to keep
            shutil.rmtree(folder)
    refined_trials = list(dict.fromkeys(split_config(c)[1].refines for c in configs))  # once per step count
    listed = config.sweep.refine.listed_steps
    each = f"; each with steps {', '.join(map(str, listed))}" if listed and configs else ""
    say(output.progress and not resume,
        f"refining {len(refined_trials)} screening trial(s): {', '.join(refined_trials) or 'none feasible'}{each}")
    if not configs:
        return True
    # the screening trials' resources, shared by refinement's concurrency
    resources = screening.resources.shared(config.sweep.refine.concurrency or config.sweep.concurrency)
    refined = replace(settings, recipe=config.refine_recipe, score_every_stage=True, measure_latency=True,
                      worker=replace(settings.worker, threads=trial_threads(resources.cpus)))
    refinement = replace(screening, settings=refined, resources=resources, count=len(configs),
                         make_search=lambda: FixedConfigs(configs), folder=REFINE_EXPERIMENT, stage=STAGE_REFINE)
    return finished_cleanly(run_trials(tracker, refinement, output, resume=resume), len(configs))


def refine_configs(screened, objectives, count: int, targets: Sequence[float] = (),
                   per_target: int = 1, plan_params=dict) -> list[dict[str, Any]]:
    """The refined trials' configs: ``count`` screening trials of the ResultGrid ``screened``
    (:func:`~orchestrator.sweeps.refine.select_candidates`, two trials with the same
    ``plan_params(params)`` being one plan), their sampled params with the
    :class:`~orchestrator.experiment.trial_meta.TrialMeta` that names (``refine-NNN``) and tags
    (stage, screening trial) their runs."""
    points = []
    for result in screened:
        if result.error is not None or not result.metrics:
            continue
        params, meta = split_config(result.config)
        number = int(meta.number)
        metrics = result.metrics
        points.append({**{k: metrics.get(k) for k in objectives}, "feasible": metrics.get("feasible", 0) >= 0.5,
                       "macs_reduction": metrics.get("macs_reduction", 0.0), "params": params, "plan": plan_params(params), "number": number})
    points.sort(key=lambda p: p["number"])
    return [
        {**points[i]["params"], META_KEY: TrialMeta(name=f"refine-{points[i]['number']:03d}", stage=STAGE_REFINE,
                                                     refines=f"trial-{points[i]['number']:03d}")}
        for i in select_candidates(points, objectives, count, key="plan", targets=targets, per_target=per_target)
    ]


def per_variant(configs: Sequence[dict[str, Any]], variants: Sequence[tuple[int | None, str]]) -> list[dict[str, Any]]:
    """Each refined trial's config once per variant (:func:`~orchestrator.sweeps.refine.refine_variants`):
    its step count in the trial's :class:`~orchestrator.experiment.trial_meta.TrialMeta` and its
    suffix on the run name (``refine-007-s4``), the variants of one candidate one after another."""
    refined = []
    for trial in configs:
        params, meta = split_config(trial)
        refined.extend({**params, META_KEY: replace(meta, name=f"{meta.name}{suffix}", steps=steps)}
                       for steps, suffix in variants)
    return refined


def resume_sweep(run_dir: str | os.PathLike, *, address: str | None = None, progress: bool = True,
                 verbose: bool = False) -> SweepResult:
    """Continue the interrupted sweep in ``run_dir`` with the config it recorded (either stage),
    where the run directory is now (a copied or moved one: its own database and checkpoints)."""
    path = Path(run_dir).absolute() / RESOLVED_CONFIG_FILE
    if not path.is_file():
        raise ConfigError("resume", f"{Path(run_dir).absolute()} holds no sweep to resume (no {RESOLVED_CONFIG_FILE})")
    config, _ = load_recorded_config(run_dir, RESOLVED_CONFIG_FILE, load_sweep_config)
    return run_sweep(config, address=address, resume=True, progress=progress, verbose=verbose)
