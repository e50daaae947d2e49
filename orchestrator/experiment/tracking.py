"""MLflow tracking of sweeps, from the driver process only.

Layout in MLflow (one experiment, e.g. ``prunesweep``):

* one **parent run** per sweep (or compare grid), found again by its tag ``prunesweep.run_dir``
  (the absolute run directory it started in: ``orchestrator.experiment.relocation``), so a
  resumed sweep keeps logging into the same run;
* one **nested run** per Tune trial (tag ``mlflow.parentRunId``), identified by the tag
  ``prunesweep.trial_id``: logging a trial twice updates its run instead of adding another, so a
  resumed sweep never duplicates a trial.

Every write goes through :class:`MlflowClient` with explicit run ids (no fluent ``mlflow.start_run``
state) and happens in the driver: the Tune callback (``orchestrator.experiment.callback``) runs in the
driver's event loop, and trial processes never open the store (several processes writing one
SQLite file would lock it).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.experiment.checks import sqlite_path
from orchestrator.experiment.relocation import ARTIFACTS_FOLDER, RunDirMove
from orchestrator.experiment.tracking_server import GuardedClient, guard, use_driver_http_defaults

__all__ = [
    "TAG_PARENT", "TAG_RUN_DIR", "TAG_KIND", "TAG_SWEEP", "TAG_COMMIT", "TAG_TRIAL_ID", "TAG_TRIAL_NUMBER",
    "TAG_CHECKPOINT", "TAG_ERROR", "TAG_PARETO", "TAG_STAGE", "TAG_REFINES", "TrialRecord", "Tracker", "error_summary",
    "resume_command", "finite_metric", "ONNX_MODEL_NAME", "DATASET_CONTEXT", "TUNE_EXPERIMENT",
]

#: the Tune experiment's folder inside a run directory (what a resume restores)
TUNE_EXPERIMENT = "tune"
#: the command that runs (and resumes) each kind of experiment
COMMANDS = {"sweep": "sweep", "study": "compare"}

TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_DIR = "prunesweep.run_dir"
TAG_KIND = "prunesweep.kind"
TAG_SWEEP = "prunesweep.sweep"
TAG_COMMIT = "prunesweep.git_commit"
TAG_TRIAL_ID = "prunesweep.trial_id"
TAG_TRIAL_NUMBER = "prunesweep.trial_number"
TAG_CHECKPOINT = "prunesweep.checkpoint"
TAG_ERROR = "prunesweep.error"
TAG_PARETO = "prunesweep.pareto"
#: a sweep trial's stage: ``screen`` (the Optuna trials) or ``refine`` (a two-stage sweep's refined ones)
TAG_STAGE = "prunesweep.stage"
#: a refined trial's screening trial (its run name)
TAG_REFINES = "prunesweep.refines"

#: the ``mlflow.data.context`` tag of the dataset input of sweep runs (train, calibration and test splits)
DATASET_CONTEXT = "sweep"

#: the MLflow model name of a Pareto-optimal trial's ONNX export (``runs:/<run id>/model``)
ONNX_MODEL_NAME = "model"
_MAX_PARAM = 6000  # MLflow's limit on a param value
_MAX_TAG = 5000  # well under MLflow's limit on a tag value
_BATCH = 100  # params / tags per log_batch call


def resume_command(kind: str, run_dir: str | os.PathLike) -> str:
    """``prunesweep <command> --resume RUN_DIR`` of the ``kind`` of experiment (sweep, study)."""
    return f"prunesweep {COMMANDS[kind]} --resume {run_dir}"


def error_summary(text: str | None) -> str:
    """The last non-empty line of a traceback (the exception and its message), shortened."""
    if not text:
        return "unknown error"
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last[:500]


def finite_metric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _param_value(value: Any) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text[:_MAX_PARAM]


@dataclass
class TrialRecord:
    """One trial as logged: Tune's id, MLflow status (FINISHED / FAILED), params, metrics, tags."""

    trial_id: str
    name: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    run_id: str | None = None

    @property
    def number(self) -> int | None:
        value = self.tags.get(TAG_TRIAL_NUMBER)
        return int(value) if value not in (None, "") else None


class Tracker:
    """The MLflow side of one sweep (or compare grid): its parent run and its trials' runs.

    ``uri``: tracking URI; ``experiment``: name (created if missing; with a local SQLite store its
    artifacts go to ``<run_dir>/mlartifacts``); ``run_dir``: the sweep's absolute run directory,
    which identifies the parent run (or ``recorded_run_dir``, where it started, for a copied or
    moved one); ``kind``: ``sweep`` or ``study``. ``unique_names``: each
    trial's run name identifies it (a study's cells), so a trial Tune starts again under a new id
    (one it created after its last snapshot, before a kill) updates that run instead of adding one;
    otherwise Tune's trial id does.
    """

    def __init__(self, uri: str, experiment: str, run_dir: str | os.PathLike, *, kind: str = "sweep",
                 unique_names: bool = False, recorded_run_dir: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_dir = str(Path(run_dir).absolute())
        self.kind = kind
        self.unique_names = unique_names
        #: from where the run directory started to where it is (set from the parent run's tag)
        self.move = RunDirMove(recorded_run_dir or self.run_dir, self.run_dir)
        self._client = None
        self._experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._parent_datasets: list | None = None  # the parent's dataset inputs, copied to trial runs

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self):
        """The ``MlflowClient`` of ``uri``; a server that cannot be reached raises
        :class:`~orchestrator.experiment.tracking_server.TrackingUnavailable` (with MLflow's retries
        shortened: see :mod:`~orchestrator.experiment.tracking_server`)."""
        if self._client is None:
            from mlflow import MlflowClient

            use_driver_http_defaults()
            self._client = GuardedClient(MlflowClient(tracking_uri=self.uri), self.uri, self.resume_hint)
        return self._client

    def resume_hint(self) -> str:
        """How to get the trials Tune kept into the store once it answers again ("" before Tune ran)."""
        if self.kind in COMMANDS and (Path(self.run_dir) / TUNE_EXPERIMENT).is_dir():
            return f"Tune keeps the trial results: resume with `{resume_command(self.kind, self.run_dir)}` once it answers"
        return ""

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                location = None
                if sqlite_path(self.uri) is not None:
                    location = (Path(self.run_dir) / ARTIFACTS_FOLDER).absolute().as_uri()
                self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        return self._experiment_id

    def _search(self, filter_string: str, experiment_ids: Sequence[str] | None = None) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                list(experiment_ids or [self.experiment_id]), filter_string=filter_string,
                max_results=1000, page_token=token,
            )
            runs.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return runs

    # -- the parent run --------------------------------------------------------------------------

    def find_parent(self, *, all_experiments: bool = False) -> str | None:
        """The parent run of this run directory, else of the one it started in (the newest if
        several), or None."""
        ids = [e.experiment_id for e in self.client.search_experiments()] if all_experiments else None
        for run_dir in dict.fromkeys([self.run_dir, self.move.recorded]):
            where = f"tags.`{TAG_RUN_DIR}` = '{run_dir}' and tags.`{TAG_KIND}` = '{self.kind}'"
            runs = self._search(where, ids) if ids != [] else []
            if runs:
                break
        else:
            return None
        parent = max(runs, key=lambda r: r.info.start_time or 0)
        self.parent_run_id, self._experiment_id = parent.info.run_id, parent.info.experiment_id
        self.move = RunDirMove(parent.data.tags[TAG_RUN_DIR], self.run_dir)
        return self.parent_run_id

    def start_parent(
        self,
        run_name: str,
        *,
        params: Mapping[str, Any] = (),
        tags: Mapping[str, str] = (),
        texts: Mapping[str, str] = (),
        reuse: bool = True,
    ) -> tuple[str, bool]:
        """Create the parent run, or reopen the existing one (resume). Returns (run id, created).

        With ``reuse=False`` an existing parent of the same run directory (left by a start that
        failed before any trial ran) is marked superseded and FAILED, and a new one is created.
        """
        existing = self.find_parent()
        if existing is not None and reuse:
            self.client.update_run(existing, status="RUNNING")
            return existing, False
        if existing is not None:
            self.client.set_tag(existing, TAG_RUN_DIR, f"{self.run_dir} (superseded)")
            self.client.set_terminated(existing, status="FAILED")
            self.parent_run_id = None
        all_tags = {TAG_RUN_DIR: self.run_dir, TAG_KIND: self.kind, **dict(tags)}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        for artifact_file, text in dict(texts).items():
            self.client.log_text(self.parent_run_id, text, artifact_file)
        return self.parent_run_id, True

    def log_dataset(self, run_id: str, dataset: Any, context: str = DATASET_CONTEXT) -> None:
        """Log ``dataset`` (an ``mlflow.entities.Dataset``, see :func:`dataset_entity`) as an input
        of run ``run_id``; logging the same dataset again (a resume) adds nothing."""
        from mlflow.entities import DatasetInput, InputTag

        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def _copy_parent_datasets(self, run_id: str) -> None:
        if self._parent_datasets is None:
            inputs = self.client.get_run(self.parent_run_id).inputs
            self._parent_datasets = list(inputs.dataset_inputs if inputs is not None else [])
        if self._parent_datasets:
            self.client.log_inputs(run_id, datasets=self._parent_datasets)

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status=status)

    # -- generic writes --------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in dict(params).items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[start:start + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), v, now, step) for k, v in ((k, finite_metric(v)) for k, v in dict(metrics).items())
                 if v is not None]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)[:_MAX_TAG]) for k, v in dict(tags).items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[start:start + _BATCH])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_file(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_file_as(self, run_id: str, local_path: str | os.PathLike, artifact_file: str) -> None:
        """Log ``local_path`` under the artifact name ``artifact_file`` (directory/name)."""
        artifact_dir, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            try:
                os.link(local_path, target)
            except OSError:
                import shutil

                shutil.copyfile(local_path, target)
            self.client.log_artifact(run_id, str(target), artifact_dir or None)

    def has_logged_model(self, run_id: str, name: str) -> bool:
        """Whether run ``run_id`` has a logged (MLflow 3) model named ``name``."""
        where = f"name = '{name}' AND source_run_id = '{run_id}'"
        return bool(self.client.search_logged_models(experiment_ids=[self.experiment_id], filter_string=where,
                                                     max_results=1))

    def log_onnx_model(self, run_id: str, onnx_path: str | os.PathLike, input_example: Any, output_example: Any,
                       name: str = ONNX_MODEL_NAME) -> str:
        """Log the ONNX file ``onnx_path`` as MLflow model ``name`` of run ``run_id``, loadable with
        ``mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}")`` (no unpickling); its signature is
        inferred from ``input_example`` (a float32 batch, also logged) and ``output_example``
        (``{output name: array}``, what the pyfunc model predicts). Returns the model's URI.

        The logged model is created here, in this tracker's store and experiment: MLflow's
        ``log_model`` would otherwise take the process's tracking URI and active experiment.
        Its requirements are written out (the flavor's pinned onnx and onnxruntime, and numpy):
        left to MLflow, they are inferred by loading the model in a subprocess, 2-3 s a model,
        to find the same list."""
        import mlflow.onnx
        import numpy
        import onnx
        from mlflow.models import infer_signature
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id)
        with _use_tracking_uri(self.uri), guard(self.uri, self.resume_hint):
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)), name=name, run_id=run_id, model_id=logged.model_id,
                input_example=input_example, signature=infer_signature(input_example, output_example),
                onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
                pip_requirements=[*mlflow.onnx.get_default_pip_requirements(), f"numpy=={numpy.__version__}"],
            )
        return info.model_uri

    # -- trials -----------------------------------------------------------------------------------

    def trial_runs(self) -> dict[str, Any]:
        """{trial key (:meth:`trial_key`): MLflow Run} of the parent's nested runs."""
        if self.parent_run_id is None:
            return {}
        runs = self._search(f"tags.`{TAG_PARENT}` = '{self.parent_run_id}'")
        by_trial: dict[str, Any] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            trial_id = run.data.tags.get(TAG_TRIAL_ID)
            if trial_id is not None:
                by_trial.setdefault(self.trial_key(trial_id, run.info.run_name), run)
        return by_trial

    def trial_key(self, trial_id: str, name: str) -> str:
        """What identifies a trial's run: its name with ``unique_names``, else its trial id."""
        return name if self.unique_names else trial_id

    def log_trial(self, record: TrialRecord, existing: Any = None) -> str:
        """Create or update the nested run of ``record`` (found by :meth:`trial_key`); returns its run id.

        A trial already logged with the same status and metrics is left alone (idempotent).
        """
        if self.parent_run_id is None:
            raise RuntimeError("start_parent() first")
        run = existing if existing is not None else self.trial_runs().get(self.trial_key(record.trial_id, record.name))
        if run is None:
            tags = {TAG_PARENT: self.parent_run_id, TAG_TRIAL_ID: record.trial_id, TAG_KIND: self.kind}
            run = self.client.create_run(self.experiment_id, run_name=record.name, tags=tags)
            run_id = run.info.run_id
            self.log_params(run_id, record.params)
            self._copy_parent_datasets(run_id)
        else:
            run_id = run.info.run_id
            unchanged = (
                run.info.status == record.status
                and all(run.data.metrics.get(k) == finite_metric(v) for k, v in record.metrics.items() if finite_metric(v) is not None)
            )
            if unchanged:
                record.run_id = run_id
                return run_id
            logged = run.data.params
            new_params = {k: v for k, v in record.params.items() if k not in logged}
            self.log_params(run_id, new_params)
        self.log_metrics(run_id, record.metrics)
        tags = dict(record.tags)
        if record.checkpoint:  # under the run directory where it started, as the parent run's tag
            tags[TAG_CHECKPOINT] = self.move.recorded_path(record.checkpoint)
        if record.status == "FAILED":
            tags[TAG_ERROR] = error_summary(record.error)
        self.set_tags(run_id, tags)
        if record.status == "FAILED" and record.error:
            self.client.log_text(run_id, record.error, "error.txt")
        self.client.set_terminated(run_id, status=record.status)
        record.run_id = run_id
        return run_id

    def read_trials(self) -> list[TrialRecord]:
        """Every nested run of the parent as a :class:`TrialRecord`, in creation order."""
        records = []
        for run in self.trial_runs().values():
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
            trial_id = tags[TAG_TRIAL_ID]
            records.append(TrialRecord(
                trial_id=trial_id,
                name=run.info.run_name or trial_id,
                status=run.info.status,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                tags=tags,
                error=tags.get(TAG_ERROR),
                checkpoint=self.move.path(tags.get(TAG_CHECKPOINT)),
                run_id=run.info.run_id,
            ))
        return records
