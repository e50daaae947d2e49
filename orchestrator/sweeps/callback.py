"""The Tune callback that logs every ended trial to MLflow, from the driver's event loop.

Trial logging never raises into Tune: a failure is reported as a warning and repaired by the
reconciliation pass at the end of the experiment.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from ray import tune

from orchestrator.sweeps.tracking import TAG_TRIAL_NUMBER, Tracker, TrialRecord, finite_metric

__all__ = ["MlflowTrialLogger"]

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


class MlflowTrialLogger(tune.Callback):
    """Logs every finished or failed Tune trial as a nested MLflow run of the sweep's parent run.

    Holds only plain settings (Tune pickles its callbacks into the experiment so that
    ``Tuner.restore`` brings them back); the MLflow client is opened lazily in the driver.

    ``metric_names``: result keys logged as metrics (numbers); ``tag_names``: result keys logged as
    tags (strings such as a criterion name or an infeasibility reason). Config keys starting with
    ``_`` are bookkeeping, not parameters; ``_trial_number`` names the run ``trial-NNN``.
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
        number = config.get("_trial_number")
        if number is not None:
            tags[TAG_TRIAL_NUMBER] = str(number)
            name = f"trial-{int(number):03d}"
        else:
            name = f"trial-{str(trial.experiment_tag).split('_', 1)[0]}"
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
