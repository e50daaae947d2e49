"""The experiment engine that sweeps (:mod:`orchestrator.sweeps`) and studies
(:mod:`orchestrator.studies`) both run on: reading and checking config files, preparing a
baseline once on the driver, running trials through Ray Tune, and tracking them in MLflow.

Modules: ``checks`` / ``config_file`` / ``data_settings`` / ``model_settings`` (config sections
both configs share), ``baseline`` (prepared once per checkpoint), ``worker`` (what a Ray worker
runs for a trial or a cell: shared references, fetch, prune and recover, cost), ``fixed_configs``
(a searcher of given configs), ``experiment`` (:class:`Experiment`: what a sweep and a study
open alike), ``runner`` (Ray and Tune: :func:`run_trials`), ``tracking`` / ``tracking_server`` /
``callback`` / ``run_info`` (MLflow, on the driver)."""
from orchestrator.experiment.checks import ConfigError, TrackingSettings, default_tracking_uri
from orchestrator.experiment.data_settings import DataSettings
from orchestrator.experiment.model_settings import ModelSettings
from orchestrator.experiment.tracking import (
    TAG_CHECKPOINT,
    TAG_ERROR,
    TAG_KIND,
    TAG_PARETO,
    TAG_RUN_DIR,
    TAG_STAGE,
    TAG_TRIAL_ID,
    TAG_TRIAL_NUMBER,
    Tracker,
    TrialRecord,
    error_summary,
)
from orchestrator.experiment.run_info import git_commit
from orchestrator.experiment.baseline import (
    BaselineSetup,
    compute_baseline_statistics,
    compute_utilization_curves,
    prepare_baseline,
)
from orchestrator.experiment.runner import TrialOutput, TrialResources, TrialsSpec, check_tracking_reachable, flatten
from orchestrator.experiment.experiment import Experiment, ExperimentSpec

__all__ = [
    "ConfigError", "TrackingSettings", "default_tracking_uri", "DataSettings", "ModelSettings",
    "TAG_CHECKPOINT", "TAG_ERROR", "TAG_KIND", "TAG_PARETO", "TAG_RUN_DIR", "TAG_STAGE", "TAG_TRIAL_ID",
    "TAG_TRIAL_NUMBER", "Tracker", "TrialRecord", "error_summary", "git_commit",
    "BaselineSetup", "compute_baseline_statistics", "compute_utilization_curves", "prepare_baseline",
    "check_tracking_reachable", "flatten", "TrialOutput", "TrialResources", "TrialsSpec", "Experiment", "ExperimentSpec",
]
