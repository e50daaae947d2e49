"""Criterion comparison studies: a YAML grid of checkpoints x criteria x ratio sources x recovery
recipes x FLOPs targets x seeds, run as Ray Tune trials with shared work, summarised with
confidence intervals, paired tests and average ranks, and logged to MLflow.

Modules: ``config`` (StudyConfig, from YAML), ``axes`` (its labelled baselines, criteria and
ratio sources), ``cells`` (the grid and what cells share), ``scores`` (the per-study score cache,
computed once per key as Ray tasks), ``trial`` (the cell body), ``significance`` (intervals,
paired tests, ranks), ``report`` (tables), ``plots``, ``run`` (run, resume, report from MLflow)."""
from orchestrator.studies.cells import Cell, ScoreKey, score_keys, study_cells
from orchestrator.studies.config import StudyConfig
from orchestrator.studies.run import (
    StudyResult,
    load_study_config,
    resume_study,
    run_study,
    study_parent_metrics,
    study_phase_times,
    study_report,
)

__all__ = ["Cell", "ScoreKey", "score_keys", "study_cells", "StudyConfig", "StudyResult", "load_study_config",
           "resume_study", "run_study", "study_parent_metrics", "study_phase_times", "study_report"]
