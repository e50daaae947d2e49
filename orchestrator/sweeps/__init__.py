"""Sweeps: search the task-metric-vs-cost Pareto front with Ray Tune + Optuna, tracked in MLflow
(the engine they run on, shared with criterion comparison studies, is :mod:`orchestrator.experiment`).
Modules: ``config`` (the validated sweep YAML), ``trials`` (the trial body), ``search`` (Optuna),
``sweep`` (the driver), ``refine`` (two-stage sweeps), ``results`` (the front), ``front``
(dominance, hypervolume, plot, table)."""
from orchestrator.sweeps.config import (
    OBJECTIVES,
    SAMPLERS,
    SpaceSettings,
    SweepConfig,
    SweepSettings,
    dump_sweep_config,
    load_sweep_config,
)
from orchestrator.sweeps.front import DIRECTIONS, eligible, front_table, hypervolume, pareto_front, plot_front
from orchestrator.sweeps.search import DefineByRun, make_sampler, register_context
from orchestrator.sweeps.results import SweepResult, front_hypervolume, read_front
from orchestrator.sweeps.sweep import resume_sweep, run_sweep

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SpaceSettings",
    "SweepConfig",
    "SweepSettings",
    "dump_sweep_config",
    "load_sweep_config",
    "DIRECTIONS",
    "eligible",
    "front_table",
    "hypervolume",
    "pareto_front",
    "plot_front",
    "DefineByRun",
    "make_sampler",
    "register_context",
    "SweepResult",
    "front_hypervolume",
    "read_front",
    "resume_sweep",
    "run_sweep",
]
