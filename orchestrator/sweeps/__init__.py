"""Sweeps: configs, the baseline, trials, the Tune/Optuna runner, Pareto fronts and MLflow
tracking (criterion comparison studies, built on the same runner, are :mod:`orchestrator.studies`).
Modules: ``config`` / ``config_file`` / ``checks`` (configs), ``baseline`` (prepared once on the
driver), ``trials`` (trial bodies), ``search`` (Optuna), ``runner`` (Ray and Tune plumbing),
``sweep`` (the driver), ``results`` (the front), ``front`` (dominance, hypervolume, plot, table),
``tracking`` / ``callback`` (MLflow)."""
from orchestrator.sweeps.checks import ConfigError, default_tracking_uri
from orchestrator.sweeps.config import (
    OBJECTIVES,
    SAMPLERS,
    DataSettings,
    SpaceSettings,
    SweepConfig,
    SweepSettings,
    TrackingSettings,
    dump_sweep_config,
    flatten,
)
from orchestrator.sweeps.config_file import load_sweep_config
from orchestrator.sweeps.tracking import (
    TAG_CHECKPOINT,
    TAG_ERROR,
    TAG_KIND,
    TAG_PARETO,
    TAG_RUN_DIR,
    TAG_TRIAL_ID,
    TAG_TRIAL_NUMBER,
    Tracker,
    TrialRecord,
    error_summary,
    git_commit,
)
from orchestrator.sweeps.front import DIRECTIONS, eligible, front_table, hypervolume, pareto_front, plot_front
from orchestrator.sweeps.baseline import (
    BaselineSetup,
    compute_baseline_statistics,
    compute_utilization_curves,
    prepare_baseline,
)
from orchestrator.sweeps.trials import TRIAL_METRICS, InjectedFailure
from orchestrator.sweeps.search import DefineByRun, make_sampler, register_context
from orchestrator.sweeps.runner import check_tracking_reachable
from orchestrator.sweeps.results import SweepResult, front_hypervolume, read_front
from orchestrator.sweeps.sweep import resume_sweep, run_sweep

__all__ = [
    "ConfigError",
    "default_tracking_uri",
    "OBJECTIVES",
    "SAMPLERS",
    "DataSettings",
    "SpaceSettings",
    "SweepConfig",
    "SweepSettings",
    "TrackingSettings",
    "dump_sweep_config",
    "flatten",
    "load_sweep_config",
    "TAG_CHECKPOINT",
    "TAG_ERROR",
    "TAG_KIND",
    "TAG_PARETO",
    "TAG_RUN_DIR",
    "TAG_TRIAL_ID",
    "TAG_TRIAL_NUMBER",
    "Tracker",
    "TrialRecord",
    "error_summary",
    "git_commit",
    "DIRECTIONS",
    "eligible",
    "front_table",
    "hypervolume",
    "pareto_front",
    "plot_front",
    "BaselineSetup",
    "compute_baseline_statistics",
    "compute_utilization_curves",
    "prepare_baseline",
    "TRIAL_METRICS",
    "InjectedFailure",
    "DefineByRun",
    "make_sampler",
    "register_context",
    "check_tracking_reachable",
    "SweepResult",
    "front_hypervolume",
    "read_front",
    "resume_sweep",
    "run_sweep",
]
