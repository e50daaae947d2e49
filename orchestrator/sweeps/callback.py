"""The Tune callback that logs every ended trial to MLflow, from the driver's event loop.

Trial logging never raises into Tune: a failure is reported as a warning and repaired by the
reconciliation pass at the end of the experiment.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ray import tune

from orchestrator.sweeps.tracking import TAG_REFINES, TAG_STAGE, TAG_TRIAL_NUMBER, Tracker, TrialRecord, finite_metric

__all__ = ["MlflowTrialLogger", "ProgressLines"]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read_error(trial) -> str:
    """The trial's error traceback (colour codes removed), from the driver's staging copy or storage."""
    path = getattr(trial, "error_file", None)
    text = None
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    else:
        try:
            text = trial.get_error()
        except Exception:  # storage not synced yet
            text = None
    return _ANSI.sub("", str(text)) if text else "the trial failed without an error message"


def run_name(trial) -> str:
    """The MLflow run name of a Tune trial: ``_run_name``, else ``trial-NNN`` (Optuna's number),
    else from Tune's experiment tag."""
    config = dict(trial.config or {})
    if config.get("_run_name"):
        return str(config["_run_name"])
    if config.get("_trial_number") is not None:
        return f"trial-{int(config['_trial_number']):03d}"
    return f"trial-{str(trial.experiment_tag).split('_', 1)[0]}"


class ProgressLines(tune.Callback):
    """One line on stderr per ended trial (instead of Tune's status tables):
    ``[screen] trial-003 finished: accuracy 0.8125, macs 1.2e+07 (4/16 done, 1 failed)``.

    ``enabled`` is process-wide (set by the driver before each run) so that a restored experiment,
    whose callbacks come back from its pickled state, follows the new driver's ``--quiet``.
    """

    enabled: bool = True

    def __init__(self, stage: str, total: int) -> None:
        self.stage = stage
        self.total = int(total)

    def _line(self, trials: list, trial, what: str) -> None:
        if not type(self).enabled:
            return
        done = {t.trial_id for t in trials if t.status == "TERMINATED"}
        failed = {t.trial_id for t in trials if t.status == "ERROR"}
        (failed if what == "failed" else done).add(trial.trial_id)
        result = dict(trial.last_result or {}) if what == "finished" else {}
        detail = ""
        if result.get("feasible") == 0:
            detail = ": infeasible"
        elif finite_metric(result.get("accuracy")) is not None and finite_metric(result.get("macs")) is not None:
            detail = f": accuracy {result['accuracy']:.4f}, macs {result['macs']:.3g}"
        print(f"[{self.stage}] {run_name(trial)} {what}{detail} "
              f"({len(done | failed)}/{max(self.total, len(trials))} done, {len(failed)} failed)", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial, "failed")


class MlflowTrialLogger(tune.Callback):
    """Logs every finished or failed Tune trial as a nested MLflow run of the sweep's parent run.

    Holds only plain settings (Tune pickles its callbacks into the experiment so that
    ``Tuner.restore`` brings them back); the MLflow client is opened lazily in the driver.

    ``metric_names``: result keys logged as metrics (numbers); ``tag_names``: result keys logged as
    tags (strings such as a criterion name or an infeasibility reason). Config keys starting with
    ``_`` are bookkeeping, not parameters: ``_trial_number`` names the run ``trial-NNN`` (unless
    ``_run_name`` names it), ``_stage`` and ``_refines`` become the tags ``prunesweep.stage`` and
    ``prunesweep.refines``.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_dir: str,
        *,
        kind: str = "sweep",
        metric_names: Sequence[str] = (),
        tag_names: Sequence[str] = (),
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_dir = run_dir
        self.kind = kind
        self.metric_names = tuple(metric_names)
        self.tag_names = tuple(tag_names)
        self._tracker: Tracker | None = None
        self.logged: dict[str, str] = {}  # trial id -> status logged by this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tracker"] = None
        state["logged"] = {}
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            tracker = Tracker(self.uri, self.experiment, self.run_dir, kind=self.kind)
            if tracker.find_parent() is None:
                raise RuntimeError(f"no MLflow parent run for {self.run_dir} in {self.uri}")
            self._tracker = tracker
        return self._tracker

    def record(self, trial, status: str) -> TrialRecord:
        """The :class:`TrialRecord` of a Tune trial that ended with ``status``."""
        config = dict(trial.config or {})
        params = {k: v for k, v in config.items() if not str(k).startswith("_")}
        result = dict(trial.last_result or {}) if status == "FINISHED" else {}
        metrics = {k: result[k] for k in self.metric_names if finite_metric(result.get(k)) is not None}
        if status == "FINISHED" and finite_metric(result.get("time_total_s")) is not None:
            metrics["trial_seconds"] = result["time_total_s"]
        tags = {k: str(result[k]) for k in self.tag_names if result.get(k) not in (None, "")}
        tags.update({tag: str(config[key]) for key, tag in (("_stage", TAG_STAGE), ("_refines", TAG_REFINES))
                     if config.get(key) is not None})
        name = run_name(trial)
        number = config.get("_trial_number")
        if number is not None:
            tags[TAG_TRIAL_NUMBER] = str(number)
        checkpoint = None
        if status == "FINISHED" and getattr(trial, "checkpoint", None) is not None:
            checkpoint = trial.checkpoint.path
        error = _read_error(trial) if status == "FAILED" else None
        return TrialRecord(trial.trial_id, name, status, params, metrics, tags, error, checkpoint)

    def _log(self, trial, status: str) -> None:
        try:
            record = self.record(trial, status)
            self.tracker.log_trial(record)
            self.logged[trial.trial_id] = status
        except Exception as err:  # never break the Tune loop; on_experiment_end retries
            logger.warning("MLflow logging of trial %s failed: %s", trial.trial_id, err)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._log(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._log(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info) -> None:
        """Reconcile: every ended trial has a nested run with its final status."""
        try:
            runs = self.tracker.trial_runs()
        except Exception as err:
            logger.warning("MLflow reconciliation failed: %s", err)
            return
        for trial in trials:
            status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial.status)
            if status is None:
                continue
            run = runs.get(trial.trial_id)
            if run is not None and run.info.status == status:
                continue
            try:
                self.tracker.log_trial(self.record(trial, status), existing=run)
            except Exception as err:
                logger.warning("MLflow logging of trial %s failed: %s", trial.trial_id, err)
