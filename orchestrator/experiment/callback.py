"""The Tune callback that logs every ended trial to MLflow, from the driver's event loop.

Trial logging never raises into Tune: a failure is reported as a warning and repaired by the
reconciliation pass at the end of the experiment. While the tracking server does not answer, the
ended trials are kept and logged with the next attempt (one per ``RETRY_AFTER_S``, so that a gone
server does not stall Tune's loop at every trial); what the experiment's end still cannot log is
left in ``MlflowTrialLogger.unlogged`` for the runner to report.

A trial still running when the experiment is interrupted (Ctrl-C, SIGTERM) is not logged: Tune
saves it as running, then marks it TERMINATED without a result while it stops it, and a resume
runs it again; it is logged once, when that run ends.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ray import tune

from orchestrator.experiment.tracking import TAG_REFINES, TAG_STAGE, TAG_TRIAL_NUMBER, Tracker, TrialRecord, finite_metric
from orchestrator.experiment.tracking_server import TrackingUnavailable
from orchestrator.experiment.trial_meta import split_config

__all__ = ["MlflowTrialLogger", "ProgressLines", "trial_error_text"]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: seconds between attempts to reach a tracking server that did not answer
RETRY_AFTER_S = 60.0


def trial_error_text(trial) -> str:
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
    """The MLflow run name of a Tune trial: its :class:`TrialMeta`'s, else from Tune's experiment tag."""
    _, meta = split_config(trial.config)
    return meta.run_name() or f"trial-{str(trial.experiment_tag).split('_', 1)[0]}"


class ProgressLines(tune.Callback):
    """One line on stderr per ended trial (instead of Tune's status tables):
    ``[screen] trial-003 finished: accuracy 0.8125, macs 1.2e+07 (4/16 done, 1 failed)`` (``score``:
    the metric shown, the task's primary one; and the latency where the sweep measures it:
    ``, latency 2.31 ms``),
    or with ``as_bar`` one progress bar for them all: ``[study] 37/96 cells, 2 failed, ETA``.

    ``enabled`` and ``as_bar`` are process-wide (set by the driver before each run) so that a
    restored experiment, whose callbacks come back from its pickled state, follows the new
    driver's ``--quiet`` and console.
    """

    enabled: bool = True
    #: one bar instead of a line per trial: a study's console, where hundreds of cells end
    as_bar: bool = False

    def __init__(self, stage: str, total: int, score: str = "accuracy") -> None:
        self.stage = stage
        self.total = int(total)
        self.score = score
        self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}  # the console's bar stays with this driver

    def _line(self, trials: list, trial, what: str) -> None:
        if not type(self).enabled:
            return
        done = {t.trial_id for t in trials if t.status == "TERMINATED"}
        failed = {t.trial_id for t in trials if t.status == "ERROR"}
        (failed if what == "failed" else done).add(trial.trial_id)
        if type(self).as_bar:
            self._show_bar(len(done), len(failed), max(self.total, len(trials)))
            return
        result = dict(trial.last_result or {}) if what == "finished" else {}
        detail = ""
        if result.get("feasible") == 0:
            detail = ": infeasible"
        elif finite_metric(result.get(score := getattr(self, "score", "accuracy"))) is not None \
                and finite_metric(result.get("macs")) is not None:  # a callback pickled before scores were named: accuracy
            detail = f": {score} {result[score]:.4f}, macs {result['macs']:.3g}"
            if finite_metric(result.get("latency_ms")) is not None:
                detail += f", latency {result['latency_ms']:.3g} ms"
        print(f"[{self.stage}] {run_name(trial)} {what}{detail} "
              f"({len(done | failed)}/{max(self.total, len(trials))} done, {len(failed)} failed)", file=sys.stderr, flush=True)

    def _show_bar(self, done: int, failed: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # the first update after a restore counts the trials that ended before it: the
            # ETA is the rate of this driver's trials only
            self._bar = tqdm(total=total, initial=done + failed - 1, desc=f"[{self.stage}]", unit="cell",
                             file=sys.stderr, dynamic_ncols=True)
        self._bar.total = total
        self._bar.set_postfix_str(f"{failed} failed", refresh=False)
        self._bar.update(done + failed - self._bar.n)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial, "failed")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MlflowTrialLogger(tune.Callback):
    """Logs every finished or failed Tune trial as a nested MLflow run of the sweep's parent run.

    Holds only plain settings (Tune pickles its callbacks into the experiment so that
    ``Tuner.restore`` brings them back); the MLflow client is opened lazily in the driver.

    ``metric_names``: result keys logged as metrics (numbers); ``metric_patterns``: regular
    expressions of more of them (a whole key matches; the steps of a progressive recipe, as many as
    it has); ``tag_names``: result keys logged as tags (strings such as a criterion name or an
    infeasibility reason). A trial config's
    :class:`~orchestrator.experiment.trial_meta.TrialMeta` names the run and tags it (its number,
    stage, the trial it refines); the rest of the config is the run's params.
    """

    #: run directory -> (why, names of the ended trials the experiment's end could not log):
    #: process-wide, because a restored experiment's logger is not the object the runner made
    unlogged: ClassVar[dict[str, tuple[str, list[str]]]] = {}
    #: the tracker of the experiment being restored, whose settings a restored logger takes: the
    #: ones it was pickled with name where its run directory was (it may have been moved since)
    restoring: ClassVar[Tracker | None] = None

    #: a logger pickled before it had patterns (a restored experiment) logs no more than its names
    metric_patterns: tuple[str, ...] = ()

    def __init__(self, tracker: Tracker, metric_names: Sequence[str] = (), tag_names: Sequence[str] = (),
                 metric_patterns: Sequence[str] = ()) -> None:
        self._use(tracker)
        self.metric_names = tuple(metric_names)
        self.tag_names = tuple(tag_names)
        self.metric_patterns = tuple(metric_patterns)
        self._tracker: Tracker | None = None
        self.logged: dict[str, str] = {}  # trial id -> status logged by this process
        self._pending: dict[str, tuple[Any, str]] = {}  # trial id -> (trial, status) not logged yet
        self._retry_at = 0.0  # time.monotonic() before which the server is not asked again
        self._running: set[str] = set()  # ids of the trials this process started that have not ended

    def _use(self, tracker: Tracker) -> None:
        """The tracker's settings, not the tracker: a fresh one is opened where the logger runs."""
        self.uri, self.experiment, self.run_dir = tracker.uri, tracker.experiment, tracker.run_dir
        self.kind, self.unique_names, self.started_in = tracker.kind, tracker.unique_names, tracker.move.recorded

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Tune's state keeps the trials
        state.update(_tracker=None, logged={}, _pending={}, _retry_at=0.0, _running=set())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if MlflowTrialLogger.restoring is not None:
            self._use(MlflowTrialLogger.restoring)

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            tracker = Tracker(self.uri, self.experiment, self.run_dir, kind=self.kind, unique_names=self.unique_names,
                              recorded_run_dir=self.started_in)
            if tracker.find_parent() is None:
                raise RuntimeError(f"no MLflow parent run for {self.run_dir} in {self.uri}")
            self._tracker = tracker
        return self._tracker

    def record(self, trial, status: str) -> TrialRecord:
        """The :class:`TrialRecord` of a Tune trial that ended with ``status``."""
        params, meta = split_config(trial.config)
        result = dict(trial.last_result or {}) if status == "FINISHED" else {}
        metrics = {k: result[k] for k in self.metric_names if finite_metric(result.get(k)) is not None}
        patterns = [re.compile(pattern) for pattern in self.metric_patterns]
        metrics.update({k: v for k, v in result.items() if k not in metrics and finite_metric(v) is not None
                        and any(p.fullmatch(k) for p in patterns)})
        # a sweep trial measures its own time (a re-reported result keeps it); Tune's otherwise
        if status == "FINISHED" and "trial_seconds" not in metrics and finite_metric(result.get("time_total_s")) is not None:
            metrics["trial_seconds"] = result["time_total_s"]
        tags = {k: str(result[k]) for k in self.tag_names if result.get(k) not in (None, "")}
        tags.update({tag: str(value) for tag, value in ((TAG_STAGE, meta.stage), (TAG_REFINES, meta.refines),
                                                         (TAG_TRIAL_NUMBER, meta.number)) if value is not None})
        name = run_name(trial)
        checkpoint = None
        if status == "FINISHED" and getattr(trial, "checkpoint", None) is not None:
            checkpoint = trial.checkpoint.path
        error = trial_error_text(trial) if status == "FAILED" else None
        return TrialRecord(trial.trial_id, name, status, params, metrics, tags, error, checkpoint)

    def _log(self, trial, status: str) -> None:
        self._pending[trial.trial_id] = (trial, status)
        if time.monotonic() < self._retry_at:
            return  # the server did not answer a moment ago: keep the trial for the next attempt
        for trial_id, (pending, pending_status) in list(self._pending.items()):
            try:
                self.tracker.log_trial(self.record(pending, pending_status))
                self.logged[trial_id] = pending_status
            except TrackingUnavailable as err:
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                logger.warning("the MLflow server %s does not answer (%s): %d trial result(s) kept, next attempt "
                               "in %.0f s", err.uri, err.reason, len(self._pending), RETRY_AFTER_S)
                return
            except Exception as err:  # never break the Tune loop; on_experiment_end retries
                logger.warning("MLflow logging of trial %s failed: %s", trial_id, err)
            del self._pending[trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._running.discard(trial.trial_id)
        self._log(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._running.discard(trial.trial_id)
        self._log(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info) -> None:
        """Reconcile: every ended trial has a nested run with its final status (asking the server
        again whenever it last failed); the trials it cannot log go to ``unlogged``. A trial
        that was running when the experiment was interrupted has not ended (see the module
        docstring)."""
        ended = [(t, s) for t in trials if t.trial_id not in self._running
                 and (s := {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(t.status))]
        try:
            runs = self.tracker.trial_runs()
        except Exception as err:
            logger.warning("MLflow reconciliation failed: %s", err)
            if isinstance(err, TrackingUnavailable):
                # the ones this process did not log (nothing can tell which earlier ones are logged)
                missing = [run_name(t) for t, status in ended if self.logged.get(t.trial_id) != status]
                if missing:
                    type(self).unlogged[self.run_dir] = (err.reason, missing)
            return
        missing: list[str] = []
        reason = ""
        for trial, status in ended:
            run = runs.get(self.tracker.trial_key(trial.trial_id, run_name(trial)))
            if run is not None and run.info.status == status:
                continue
            if missing:  # the server stopped answering during this pass: do not wait for it per trial
                missing.append(run_name(trial))
                continue
            try:
                self.tracker.log_trial(self.record(trial, status), existing=run)
            except TrackingUnavailable as err:
                reason = err.reason
                missing.append(run_name(trial))
            except Exception as err:
                logger.warning("MLflow logging of trial %s failed: %s", trial.trial_id, err)
        if missing:
            type(self).unlogged[self.run_dir] = (reason, missing)
