"""A sweep's outcome: the Pareto front over its feasible finished trials (a two-stage sweep's
refined trials only), the front's test score (``test_<P>``, P the task's primary metric),
hypervolume, table, plot, checkpoints and ONNX models, logged at the end or read back from
MLflow; the front's models exported as ONNX files."""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.report import format_table, format_value
from orchestrator.experiment.baseline import say
from orchestrator.experiment.checks import ConfigError, default_tracking_uri
from orchestrator.experiment.checks import TrackingSettings
from orchestrator.experiment.relocation import load_recorded_config
from orchestrator.experiment.store_check import check_mlflow_database
from orchestrator.sweeps.config import RESOLVED_CONFIG_FILE, load_sweep_config
from orchestrator.sweeps.front import front_table, hypervolume, pareto_front, plot_front
from orchestrator.sweeps.latency import LATENCY_METRICS, LatencySettings, front_error_summary, front_latency
from orchestrator.sweeps.objectives import COSTS, best_first, hypervolume_reference, task_metric
from orchestrator.sweeps.refine import CANDIDATES_FILE, REFINE_EXPERIMENT, STAGE_REFINE
from orchestrator.experiment.tracking_server import TrackingUnavailable, browse_hint
from orchestrator.experiment.tracking import (
    ONNX_MODEL_NAME, TAG_PARETO, TAG_STAGE, TAG_SWEEP, TUNE_EXPERIMENT, Tracker, TrialRecord, resume_command,
)
from orchestrator.experiment.stage_status import stage_ended
from orchestrator.sweeps.trials import MODEL_FILE
from pruning.errors import InputError

__all__ = ["SweepResult", "front_hypervolume", "finalize_sweep", "read_front", "export_front"]


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
    #: wall seconds of this run's phases (baseline, extras, screening, refinement, front), as
    #: measured by the driver; empty when read back from MLflow
    phases: dict[str, float] = field(default_factory=dict)
    #: the signal that stopped the run (``"SIGTERM"``, ``"SIGHUP"``); None: none did
    stopped_by: str | None = None
    #: where ``latency_ms`` was measured (``sweep.latency``: runtime, device, batch, threads,
    #: repeats, ...); None: latency is not an objective
    latency: LatencySettings | None = None
    #: the task's primary metric: the front's ``<P>``, ``test_<P>`` and ``bn_<P>`` columns
    primary: str = "accuracy"

    @property
    def mlflow_ui(self) -> str:
        return browse_hint(self.tracking_uri)

    def counts(self) -> dict[str, int]:
        finished = [t for t in self.trials if t.status == "FINISHED"]
        feasible = [t for t in finished if t.metrics.get("feasible", 1.0) >= 0.5]
        return {"trials": len(self.trials), "finished": len(finished), "feasible": len(feasible),
                "failed": sum(t.status == "FAILED" for t in self.trials), "front": len(self.front),
                "refined": sum(t.tags.get(TAG_STAGE) == STAGE_REFINE for t in self.trials)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "run_dir": self.run_dir, "tracking_uri": self.tracking_uri,
            "experiment": self.experiment, "parent_run_id": self.parent_run_id,
            "objectives": self.objectives, "baseline": self.baseline, "counts": self.counts(),
            "hypervolume": self.hypervolume, "complete": self.complete, "front": self.front,
            "trials": [asdict(t) for t in self.trials], "mlflow_ui": self.mlflow_ui, "phases": self.phases,
            "stopped_by": self.stopped_by, "latency": self.latency.to_dict() if self.latency else None,
        }

    def front_columns(self) -> list[str]:
        cost = [k for k in COSTS if k in self.objectives or k == "macs"]
        scores = [self.primary, *(k for k in self.objectives if k not in COSTS and k != self.primary)]
        return ["trial", "criterion", *scores, f"test_{self.primary}", *cost, *_latency_columns(self.objectives),
                "macs_reduction", f"bn_{self.primary}"]

    def text(self) -> str:
        counts = self.counts()
        lines = [
            f"sweep {self.name}: {counts['trials']} trials ({counts['finished']} finished, "
            f"{counts['feasible']} feasible, {counts['failed']} failed"
            + (f"; {counts['refined']} of them refined" if counts["refined"] else "") + ")"
            + ("" if self.complete else f" - INTERRUPTED{f' by {self.stopped_by}' if self.stopped_by else ''}, "
               f"resume with: {resume_command('sweep', self.run_dir)}"),
            "baseline: " + ", ".join(f"{k} {format_value(v)}" for k, v in self.baseline.items()),
            f"Pareto front over {', '.join(f'{k} ({v})' for k, v in self.objectives.items())}: {len(self.front)} trial(s)"
            + (f", hypervolume {self.hypervolume:.6g}" if self.hypervolume is not None else ""),
        ]
        if self.latency is not None:
            lines.append(f"latency_ms: {self.latency.target.describe()}")
        if self.front:
            columns = self.front_columns()
            lines.append(format_table([[row.get(c, "") for c in columns] for row in self.front], columns))
        if self.phases:
            lines.append("wall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items()))
        lines.append(f"MLflow: {self.mlflow_ui}   (parent run {self.parent_run_id})")
        return "\n".join(lines)


def _latency_columns(objectives: Mapping[str, str]) -> list[str]:
    """The latency model's columns of a front with a latency objective: predicted, measured, error."""
    return [k for k in LATENCY_METRICS if k != "latency_ms"] if "latency_ms" in objectives else []


def _point(record: TrialRecord) -> dict[str, Any]:
    point: dict[str, Any] = dict(record.metrics)
    point["feasible"] = record.metrics.get("feasible", 1.0) >= 0.5
    point["trial"] = record.name
    point["trial_id"] = record.trial_id
    point["criterion"] = record.tags.get("criterion") or record.params.get("criterion", "")
    return point


def _front(records: Sequence[TrialRecord], objectives: Mapping[str, str],
           two_stage: bool) -> tuple[list[TrialRecord], list[dict], list[int]]:
    """Finished trials (a two-stage sweep's refined ones), their points, and the indices of the
    Pareto-optimal feasible ones."""
    finished = [r for r in records if r.status == "FINISHED" and (not two_stage or r.tags.get(TAG_STAGE) == STAGE_REFINE)]
    points = [_point(r) for r in finished]
    front = pareto_front(points, objectives)
    first = next((k for k in objectives if k in COSTS), "macs")
    better = best_first(objectives)
    front.sort(key=lambda i: (points[i].get(first, math.inf), better(points[i])))
    return finished, points, front


def _front_row(record: TrialRecord, point: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in point.items() if k != "feasible"}
    row["run_id"] = record.run_id
    row["checkpoint"] = record.checkpoint
    row["params"] = dict(record.params)
    return row


def front_hypervolume(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str],
                      baseline: Mapping[str, float]) -> float | None:
    """The sweep's hypervolume: reference 0 for a higher-is-better task metric and the baseline's
    costs (None when the baseline lacks a cost objective or an objective has no reference:
    :func:`~orchestrator.sweeps.objectives.hypervolume_reference`)."""
    reference = hypervolume_reference(objectives, baseline)
    if not all(math.isfinite(v) for v in reference.values()):
        return None
    return hypervolume(points, objectives, reference)


def _test_score(model, splits, task) -> float:
    """The task's primary metric of ``model`` on the test split."""
    from pruning.data import make_eval_loader
    from pruning.training import evaluate
    from pruning.utils import model_device

    return evaluate(model, make_eval_loader(splits.test, model_device(model)), task=task).score


def _log_onnx_model(tracker: Tracker, record: TrialRecord, model, spec, folder: str, progress: bool) -> None:
    """The trial's pruned model as a checked ONNX export, logged as the MLflow model
    ``ONNX_MODEL_NAME`` of its run (once: a resumed sweep's run keeps its model); a model ONNX
    cannot represent is reported and skipped, the sweep's result stands without it."""
    import numpy as np

    from pruning.export import INPUT_NAME, OUTPUT_NAME, ExportError, export_model, onnx_session

    if tracker.has_logged_model(record.run_id, ONNX_MODEL_NAME):
        return
    path = Path(folder) / f"{record.name}.onnx"
    try:
        export_model(model, tuple(spec.input_shape), path, "onnx", what=f"trial {record.name}")
    except ExportError as err:
        say(progress, f"{record.name}: no ONNX model logged: {err}")
        return
    example = np.random.default_rng(0).standard_normal((1, *spec.input_shape)).astype(np.float32)
    outputs = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    tracker.log_onnx_model(record.run_id, path, example, {OUTPUT_NAME: outputs})


# long signature: the sweep's state at its end (tracker, config, baseline, table) and how it ended
def finalize_sweep(tracker: Tracker, config, setup, complete: bool, progress: bool,
                   phases: dict[str, float] | None = None, table=None) -> SweepResult:
    """Front over the logged trials; test score (``test_<P>``) of the front only (and, with a latency
    ``table``, the latency measured on its target); table, plot, checkpoints.
    ``phases``: the run's phase wall times so far; this one's is added as ``front`` and all are
    logged to the parent run as ``phase.<name>_seconds``."""
    started = time.perf_counter()
    phases = dict(phases or {})
    objectives = config.objectives
    primary = setup.task.primary
    test_metric = f"test_{primary}"
    records = tracker.read_trials()
    finished, points, front = _front(records, objectives, config.two_stage)
    parent = tracker.parent_run_id
    rows = []
    say(progress and bool(front), f"evaluating the {len(front)} Pareto-optimal model(s) on the test split "
                                  "and logging them as ONNX models")
    with tempfile.TemporaryDirectory(prefix="prunesweep-onnx-") as folder:
        for i in front:
            record, point = finished[i], points[i]
            model_file = Path(record.checkpoint or "") / MODEL_FILE
            if record.checkpoint and model_file.is_file():
                from pruning.structure import load_checkpoint

                model, spec = load_checkpoint(model_file)
                measured = {test_metric: _test_score(model, setup.splits, setup.task)}
                if table is not None:
                    measured.update(front_latency(point, model, table))
                point.update(measured)
                tracker.log_metrics(record.run_id, measured)
                tracker.log_file_as(parent, model_file, f"pareto/checkpoints/{record.name}.pt")
                _log_onnx_model(tracker, record, model, spec, folder, progress)
            rows.append(_front_row(record, point))
    for i, record in enumerate(finished):
        tracker.set_tags(record.run_id, {TAG_PARETO: str(i in front).lower()})
    volume = front_hypervolume(points, objectives, setup.metrics)
    y = task_metric(objectives) or primary
    baseline_point = {k: setup.metrics[k] for k in (y, *COSTS) if k in setup.metrics}
    x = next((k for k in objectives if k in COSTS), "macs")
    columns = list(dict.fromkeys(["trial", "criterion", *objectives, *_latency_columns(objectives), test_metric,
                                  "macs", "macs_reduction", f"bn_{primary}"]))
    with tempfile.TemporaryDirectory(prefix="prunesweep-front-") as folder:
        png = plot_front(points, objectives, front, baseline_point, Path(folder) / "front.png", axes=(x, y))
        tracker.log_file(parent, png, "pareto")
    tracker.log_text(parent, front_table(points, front, columns), "pareto/front.md")
    tracker.log_text(parent, json.dumps({"objectives": objectives, "baseline": setup.metrics, "front": rows,
                                         "hypervolume": volume}, indent=2, default=str), "pareto/front.json")
    phases["front"] = time.perf_counter() - started
    result = SweepResult(
        name=config.name, run_dir=config.run_dir, tracking_uri=config.tracking_uri,
        experiment=config.tracking.experiment, parent_run_id=parent, objectives=objectives,
        baseline=dict(setup.metrics), trials=records, front=rows, hypervolume=volume, complete=complete,
        phases=phases, latency=config.sweep.latency, primary=primary,
    )
    counts = result.counts()
    summary = {"pareto_size": len(front), "trials_finished": counts["finished"], "trials_failed": counts["failed"],
               "trials_feasible": counts["feasible"], "trials_refined": counts["refined"]}
    if volume is not None:
        summary["hypervolume"] = volume
    summary.update({f"phase.{name}_seconds": seconds for name, seconds in phases.items()})
    summary.update(front_error_summary(rows))
    for row in rows:
        if test_metric in row:
            summary[f"pareto.{row['trial']}.{test_metric}"] = row[test_metric]
    tracker.log_metrics(parent, summary)
    tracker.finish_parent("FINISHED" if complete else "KILLED")
    return result


def read_front(run_dir: str | os.PathLike, *, tracking_uri: str | None = None, cost: str | None = None) -> SweepResult:
    """The sweep of ``run_dir`` read back from MLflow, writing nothing: trials, front (recomputed
    from the logged metrics over feasible finished trials, for the objectives of the recorded
    ``sweep.yaml``: the run directory's, else the parent run's copy) with the test score
    (``test_<P>``) logged for it. A copied or moved run directory is read from its own database and checkpoints
    (:mod:`~orchestrator.experiment.relocation`); ``tracking_uri`` replaces the recorded one.
    ``cost``: the front over the task's primary metric and this logged metric (``macs``,
    ``params``, ``latency_ms``) instead of the sweep's objectives."""
    run_dir = str(Path(run_dir).absolute())
    config, move = (load_recorded_config(run_dir, RESOLVED_CONFIG_FILE, load_sweep_config)
                    if (Path(run_dir) / RESOLVED_CONFIG_FILE).is_file() else (None, None))
    if tracking_uri is not None:
        TrackingSettings.from_dict({"uri": tracking_uri})  # same checks as a config's
    uri = tracking_uri or (config.tracking_uri if config else default_tracking_uri(run_dir))
    check_mlflow_database(uri)  # before MLflow, which would create its tables in an empty or foreign file
    experiment = config.tracking.experiment if config else "prunesweep"
    try:
        tracker = Tracker(uri, experiment, run_dir, kind="sweep", recorded_run_dir=move.recorded if move else None)
        return _read_front(tracker, config, cost)
    except TrackingUnavailable as err:  # the driver's hint (Tune keeps results) does not apply here
        raise TrackingUnavailable(err.uri, err.reason, _unreachable_hint(run_dir, config)) from None


def _unreachable_hint(run_dir: str, config) -> str:
    """What to do when the server does not answer ``pareto``: start it or name another; continue
    the sweep as well where its run directory shows it unfinished (``config``: None when unknown)."""
    hint = "start it, or give a --tracking-uri that answers"
    if config is not None and not _sweep_ended(Path(run_dir), config):
        hint += f"; the sweep is unfinished: `{resume_command('sweep', run_dir)}` continues it"
    return hint


def _sweep_ended(run_dir: Path, config) -> bool:
    """Whether the sweep in ``run_dir`` ran to its end, as its Tune snapshots say: every screening
    trial ended, and in a two-stage sweep every refined trial (or none was feasible to refine)."""
    if not stage_ended(run_dir / TUNE_EXPERIMENT, config.sweep.trials):
        return False
    if not config.two_stage:
        return True
    chosen = run_dir / CANDIDATES_FILE
    if not chosen.is_file():
        return False
    count = len(json.loads(chosen.read_text()))
    return count == 0 or stage_ended(run_dir / REFINE_EXPERIMENT, count)


def _read_front(tracker: Tracker, config, cost: str | None) -> SweepResult:
    run_dir, uri, experiment = tracker.run_dir, tracker.uri, tracker.experiment
    parent = tracker.find_parent(all_experiments=True)
    if parent is None:
        raise ConfigError("run_dir", f"no sweep of {run_dir} in {uri}")
    run = tracker.client.get_run(parent)
    if config is None:  # the run directory lost its copy: the one the parent run recorded
        recorded = tracker.client.download_artifacts(parent, f"config/{RESOLVED_CONFIG_FILE}")
        config = load_sweep_config(recorded)
    task = config.task_spec.build()
    primary = task.primary
    objectives = config.objectives if cost is None else {primary: task.metric(primary).direction, cost: "min"}
    baseline = {k[len("baseline_"):]: v for k, v in run.data.metrics.items() if k.startswith("baseline_")}
    records = tracker.read_trials()
    if cost is not None and records and not any(cost in r.metrics for r in records):
        raise InputError(f"sweep {config.name} logged no {cost}: its objectives were {', '.join(config.objectives)}"
                         + ("; run a sweep with the latency_ms objective to get latency" if cost == "latency_ms" else ""))
    finished, points, front = _front(records, objectives, config.two_stage)
    return SweepResult(
        name=run.data.tags.get(TAG_SWEEP, run.info.run_name or ""), run_dir=run_dir, tracking_uri=uri,
        experiment=experiment, parent_run_id=parent, objectives=objectives, baseline=baseline, trials=records,
        front=[_front_row(finished[i], points[i]) for i in front],
        hypervolume=front_hypervolume(points, objectives, baseline), complete=run.info.status == "FINISHED",
        latency=config.sweep.latency, primary=primary,
    )


def export_front(front: Sequence[Mapping[str, Any]], folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Each front row's pruned model as ``<folder>/<trial>.onnx``, checked against PyTorch (see
    :func:`pruning.export.export_model`); one dict per file: trial, file and check. Every row's
    checkpoint is looked up before anything is written, and on an error the files written so
    far are removed: the folder gets the whole front or nothing of it."""
    from pruning.export import export_model
    from pruning.structure import load_checkpoint

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"export folder {folder} is a file; give a folder to write the ONNX files into")
    files = []
    for row in front:
        model_file = Path(row.get("checkpoint") or "") / MODEL_FILE
        if not row.get("checkpoint") or not model_file.is_file():
            raise InputError(f"trial {row['trial']} has no pruned checkpoint to export (no {model_file})")
        files.append((row["trial"], model_file))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    exported = []
    try:
        for trial, model_file in files:
            model, spec = load_checkpoint(model_file)
            out = folder / f"{trial}.onnx"
            check = export_model(model, tuple(spec.input_shape), out, "onnx", what=f"trial {trial}")
            written.append(out)
            exported.append({"trial": trial, "file": str(out), "check": check.to_dict()})
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return exported
