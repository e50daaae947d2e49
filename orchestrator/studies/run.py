"""Running a study: :func:`run_study` (or its resume) and :func:`study_report` (from MLflow).

1. The driver prepares every checkpoint once (``prepare_baseline``), with its activation
   statistics computed on Ray actors where a criterion or ratio source reads them (kept in
   ``<run_dir>/baselines/<label>/stats.pt`` for a resume); each checkpoint's shared objects go
   into the object store once.
2. The score phase (:mod:`.scores`) computes the channel scores once per (checkpoint, criterion,
   seed) as Ray tasks, into the per-study cache ``<run_dir>/scores``.
3. Every cell is a Tune trial (``FixedConfigs``: the grid in order), logged as a nested MLflow
   run of the study's parent run (resolved config, git commit, baselines); a cell that fails is
   FAILED with its error and the others go on. Each cell saves its metrics in
   ``<run_dir>/cells``. ``resume`` restores the Tune experiment: finished cells are neither lost
   nor repeated (one Tune runs again reports its saved metrics), and cached scores are read,
   not recomputed.
4. The tables and plots (:mod:`.report`) go to ``<run_dir>/report`` and to the parent run's
   ``study/`` artifacts.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.experiment.baseline import StatsWorkers, load_or_compute_statistics, prepare_baseline, say
from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.config_file import default_name, read_config_file
from orchestrator.experiment.experiment import Experiment, ExperimentSpec, check_cluster_cpus
from orchestrator.experiment.fixed_configs import FixedConfigs
from orchestrator.experiment.relocation import RunDirMove, load_recorded_config
from orchestrator.experiment.store_check import check_mlflow_database
from orchestrator.experiment.runner import TrialOutput, TrialResources, TrialsSpec, finished_cleanly, run_trials
from orchestrator.experiment.tracking import TUNE_EXPERIMENT, Tracker, resume_command
from orchestrator.experiment.tracking_server import TrackingUnavailable, browse_hint
from orchestrator.experiment.stage_status import stage_ended
from orchestrator.experiment.worker import WorkerSettings, put_shared, step_metric_pattern, trial_threads
from orchestrator.studies.cells import study_cells
from orchestrator.studies.config import RESOLVED_STUDY_FILE, StudyConfig
from orchestrator.studies.plots import plot_accuracy, plot_ranks
from orchestrator.studies.report import ComparedMetric, StudyTables, long_rows, study_tables, write_tables
from orchestrator.studies.scores import SCORES_FOLDER, ScorePhase, compute_scores, read_computations
from orchestrator.studies.trial import CELL_TAGS, StudyBaseline, StudySettings, cell_metrics, study_cell
from orchestrator.sweeps.objectives import check_task_named

__all__ = ["TRACKING_KIND", "StudyResult", "load_study_config", "run_study", "resume_study", "study_report",
           "study_parent_metrics", "study_phase_times"]

#: the ``prunesweep.kind`` tag of a study's MLflow runs
TRACKING_KIND = "study"
REPORT_FOLDER = "report"
#: every finished cell's metrics, saved by the cell itself (what a resume reports again)
CELLS_FOLDER = "cells"


def load_study_config(path: str | os.PathLike, overrides=None) -> StudyConfig:
    """Read a study YAML (``overrides``: dotted keys -> values); the default name is the file's stem."""
    return StudyConfig.from_dict(read_config_file(path, overrides), default_name=default_name(path, "study"))


@dataclass
class StudyResult:
    """A study's outcome: where it is logged, its cell counts, the score phase, its tables."""

    name: str
    run_dir: str
    tracking_uri: str
    parent_run_id: str
    tables: StudyTables
    counts: dict[str, int]
    scores: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float | None = None
    #: the signal that stopped the run (``"SIGTERM"``, ``"SIGHUP"``); None: none did
    stopped_by: str | None = None

    def text(self) -> str:
        head = (f"study {self.name}: {self.counts['cells']} cells, {self.counts['finished']} finished, "
                f"{self.counts['failed']} failed")
        if self.wall_seconds:
            head += f"; {self.wall_seconds:.0f} s wall ({self.counts['ran'] * 3600 / self.wall_seconds:.0f} cells/hour)"
        stopped = (f"\nINTERRUPTED by {self.stopped_by}, resume with: {resume_command(TRACKING_KIND, self.run_dir)}"
                   if self.stopped_by else "")
        return (f"{head}\n{self.tables.text()}\nMLflow: {browse_hint(self.tracking_uri)}   "
                f"(parent run {self.parent_run_id}; tables and plots under study/){stopped}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": self.run_dir, "tracking_uri": self.tracking_uri,
                "parent_run_id": self.parent_run_id, "counts": self.counts, "scores": self.scores,
                "wall_seconds": self.wall_seconds, "cells": self.tables.long, **self.tables.to_dict(),
                "stopped_by": self.stopped_by}


def _activation_statistics(config: StudyConfig, setup, folder: Path, progress: bool):
    """The checkpoint's activation statistics where anything reads them (cached in ``folder``)."""
    from pruning.criteria import statistics_options

    criteria = [c.create(seed=0) for c in config.criteria]
    needs = any(c.needs_stats for c in criteria) or config.ratios_need("stats")
    if not needs:
        return None
    workers = StatsWorkers(config.execution.concurrency, config.execution.cpus_per_trial).within_cluster()
    return load_or_compute_statistics(setup, folder, workers, statistics_options(criteria), progress)


def run_study(config: StudyConfig, *, address: str | None = None, resume: bool = False, progress: bool = True,
              verbose: bool = False) -> StudyResult:
    """Run (``resume``: continue) the study; see the module docstring. ``progress``: one bar of
    cells done / failed / ETA on stderr; ``verbose``: Tune's status tables and the workers' output
    too."""
    started = time.perf_counter()
    spec = ExperimentSpec.of(TRACKING_KIND, config, RESOLVED_STUDY_FILE, unique_names=True)
    with Experiment.open(spec, resume, [b.source for b in config.checkpoints]) as experiment:  # the run dir's lock
        cells = study_cells(config)
        execution = config.execution
        resources = TrialResources(execution.cpus_per_trial, execution.gpus_per_trial, execution.concurrency)
        threads = trial_threads(resources.cpus)
        setups = {}
        for baseline in config.checkpoints:
            say(progress, f"loading baseline {baseline.label}")
            setups[baseline.label] = prepare_baseline(baseline.source, config.data, task=config.task, progress=progress)
            check_task_named(config.task_spec, setups[baseline.label].task_spec)
        task = config.task_spec.build()
        experiment.record()
        with experiment.connect(address, verbose, {"execution.gpus_per_trial": resources.gpus}):
            check_cluster_cpus(resources, "execution")
            baselines = {}
            for label, setup in setups.items():
                stats = _activation_statistics(config, setup, Path(config.run_dir) / "baselines" / label, progress)
                baselines[label] = StudyBaseline(put_shared(setup, stats, None), WorkerSettings.of(setup, threads))
            metrics = {f"{label}.{k}": v for label, setup in setups.items() for k, v in setup.metrics.items()}
            parent, created = experiment.start(baseline=metrics, setups=setups.values(), gpus_per_trial=resources.gpus)
            say(progress, f"MLflow parent run {parent} in {config.tracking_uri}" + ("" if created else " (resumed)"))
            scores_root = Path(config.run_dir) / SCORES_FOLDER
            phase = compute_scores(config, baselines, scores_root, progress=progress)
            settings = StudySettings(criteria={c.label: c for c in config.criteria},
                                     ratios={r.label: r for r in config.ratios}, recipes=dict(config.recipes),
                                     pruning=config.pruning, scores_root=str(scores_root),
                                     cells_root=str(Path(config.run_dir) / CELLS_FOLDER),
                                     share_scores=execution.share_scores, score_every_stage=execution.score_every_stage)
            tracker = experiment.tracker
            ended_before = len(tracker.trial_runs())  # cells a resumed study had already logged
            say(progress, f"running {len(cells)} cells, {execution.concurrency} at a time")
            trials = TrialsSpec(study_cell, settings, baselines, resources, len(cells),
                                make_search=lambda: FixedConfigs([c.trial_config() for c in cells]), stage="study")
            output = TrialOutput(cell_metrics(task), CELL_TAGS, progress=progress, verbose=verbose, bar=True,
                                 metric_patterns=(step_metric_pattern(task.primary),))
            complete = finished_cleanly(run_trials(tracker, trials, output, resume=resume), len(cells))
        result = _finalize(tracker, config, setups, phase, ended_before=ended_before,
                           wall=time.perf_counter() - started)
        tracker.finish_parent("FINISHED" if complete else "FAILED")
        return replace(result, stopped_by=experiment.termination.name)


def _score_savings(config: StudyConfig, rows, phase: ScorePhase | None) -> dict[str, Any]:
    """What scoring cost: once per key (the computation log), and what it would have cost in
    every cell (each finished cell's ``scores_compute_seconds``)."""
    computed = {}
    for line in read_computations(Path(config.run_dir) / SCORES_FOLDER):
        if line["status"] == "FINISHED":
            computed[line["key"]] = line["seconds"]
    per_cell = sum(r.get("scores_compute_seconds") or 0.0 for r in rows if r["status"] == "FINISHED")
    shared = sum(computed.values()) if config.execution.share_scores else per_cell
    info = {"keys_computed": len(computed), "shared_seconds": shared, "unshared_seconds": per_cell,
            "saved_seconds": per_cell - shared, "shared": config.execution.share_scores}
    if phase is not None:
        info.update(this_run_computed=phase.computed, this_run_reused=phase.reused, this_run_failed=phase.failed)
    return info


def _tables_and_counts(config: StudyConfig, tracker: Tracker):
    metric = ComparedMetric.of(config.task_spec.build())
    rows = long_rows(tracker.read_trials(), metric)
    tables = study_tables(rows, config.significance, config.reference, config.reference_recipe, metric)
    counts = {"cells": len(study_cells(config)), "logged": len(rows),
              "finished": sum(r["status"] == "FINISHED" for r in rows),
              "failed": sum(r["status"] == "FAILED" for r in rows)}
    return rows, tables, counts


def _finalize(tracker: Tracker, config: StudyConfig, setups, phase: ScorePhase, *, ended_before: int,
              wall: float) -> StudyResult:
    rows, tables, counts = _tables_and_counts(config, tracker)
    ran = counts["ran"] = counts["logged"] - ended_before
    savings = _score_savings(config, rows, phase)
    folder = Path(config.run_dir) / REPORT_FOLDER
    files = write_tables(tables, folder)
    accuracies = [s.metrics[tables.metric.test] for s in setups.values()]
    files.append(plot_accuracy(tables, sum(accuracies) / len(accuracies), folder / "accuracy_vs_macs.png"))
    if tables.ranks:
        files.append(plot_ranks(tables, folder / "ranks.png"))
    parent = tracker.parent_run_id
    for path in files:
        tracker.log_file(parent, path, "study")
    tracker.log_metrics(parent, {**{f"cells_{k}": v for k, v in counts.items()}, "wall_seconds": wall,
                                 "cells_per_hour": ran * 3600 / wall if wall else None,
                                 **{f"scores_{k}": v for k, v in savings.items() if not isinstance(v, bool)}})
    return StudyResult(config.name, config.run_dir, config.tracking_uri, parent, tables, counts, savings, wall)


def _recorded_config(run_dir: str | os.PathLike) -> tuple[StudyConfig, RunDirMove]:
    """The study's recorded config, where its run directory is now (a copied or moved one: its own
    database), and the move from where it ran."""
    path = Path(run_dir).absolute() / RESOLVED_STUDY_FILE
    if not path.is_file():
        raise ConfigError("resume", f"{Path(run_dir).absolute()} holds no study (no {RESOLVED_STUDY_FILE})")
    return load_recorded_config(run_dir, RESOLVED_STUDY_FILE, load_study_config)


def resume_study(run_dir: str | os.PathLike, *, address: str | None = None, progress: bool = True,
                 verbose: bool = False) -> StudyResult:
    """Continue the interrupted study in ``run_dir`` with the config it recorded."""
    return run_study(_recorded_config(run_dir)[0], address=address, resume=True, progress=progress, verbose=verbose)


def study_report(run_dir: str | os.PathLike) -> StudyResult:
    """The study's tables again, from its cells as MLflow holds them (no Ray, nothing rerun)."""
    config, move = _recorded_config(run_dir)
    try:
        tracker, parent = _recorded_parent(config, move)
        rows, tables, counts = _tables_and_counts(config, tracker)
    except TrackingUnavailable as err:  # the driver's hint (Tune keeps results) does not apply here
        hint, folder = "start it", Path(run_dir).absolute()
        if not stage_ended(folder / TUNE_EXPERIMENT, len(study_cells(config))):
            hint += f"; the study is unfinished: `{resume_command(TRACKING_KIND, folder)}` continues it"
        raise TrackingUnavailable(err.uri, err.reason, hint) from None
    counts["ran"] = 0
    return StudyResult(config.name, config.run_dir, config.tracking_uri, parent, tables, counts,
                       _score_savings(config, rows, None))


def study_parent_metrics(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics of the study's parent run (wall times, score phase), as MLflow holds them."""
    tracker, parent = _recorded_parent(*_recorded_config(run_dir))
    return dict(tracker.client.get_run(parent).data.metrics)


def study_phase_times(run_dir: str | os.PathLike) -> dict[str, float]:
    """From the MLflow start and end times, in seconds: ``before_cells`` (the parent run's start,
    once the baselines and their statistics are ready, to the first cell's: the score phase) and
    ``cells`` (the first cell's start to the last one's end); ``cells_ended``: the cells timed.
    Empty while no cell has ended."""
    tracker, parent = _recorded_parent(*_recorded_config(run_dir))
    runs = [r.info for r in tracker.trial_runs().values() if r.info.end_time]
    if not runs:
        return {}
    first, last = min(r.start_time for r in runs), max(r.end_time for r in runs)
    started = tracker.client.get_run(parent).info.start_time
    return {"before_cells": (first - started) / 1000, "cells": (last - first) / 1000, "cells_ended": len(runs)}


def _recorded_parent(config: StudyConfig, move: RunDirMove) -> tuple[Tracker, str]:
    """The tracker of a study's recorded config and its parent run id, read without writing."""
    check_mlflow_database(config.tracking_uri, "tracking.uri")
    tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind=TRACKING_KIND,
                      unique_names=True, recorded_run_dir=move.recorded)
    parent = tracker.find_parent(all_experiments=True)
    if parent is None:
        raise ConfigError("report", f"no MLflow run of the study in {config.run_dir} at {config.tracking_uri}")
    return tracker, parent
