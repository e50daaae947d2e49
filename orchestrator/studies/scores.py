"""The study's score cache: channel scores computed once per (checkpoint, criterion, seed), as
the first phase of a study, and read by every cell that needs them.

Each computation is a Ray task (``execution.cpus_per_trial`` / ``gpus_per_trial`` each) on the
baseline's shared objects; the driver writes its result to ``<run_dir>/scores/<checkpoint>/
<criterion>/seed-<n>.pt`` and appends one line to ``computations.jsonl`` (what was computed, how
long it took, or why it failed). A key whose file exists is never computed again, so a resumed
study reuses them; a failed key leaves ``seed-<n>.error.txt`` (retried by a resume) and its cells
fail with that error, while the rest of the study goes on.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from orchestrator.studies.cells import SNPFI_PRIOR, ScoreKey, score_keys
from orchestrator.studies.config import StudyConfig
from orchestrator.experiment.baseline import say
from orchestrator.experiment.tracking import error_summary
from pruning.errors import InputError
from pruning.utils import atomic_write

__all__ = ["SCORES_FOLDER", "COMPUTATIONS_FILE", "ScoresUnavailable", "ScorePhase", "compute_scores", "load_scores",
           "read_computations"]

SCORES_FOLDER = "scores"
COMPUTATIONS_FILE = "computations.jsonl"


class ScoresUnavailable(RuntimeError):
    """A cell's scores could not be computed; the message is the scoring task's error."""


@dataclass(frozen=True)
class ScorePhase:
    """What the score phase did: keys computed now, found in the cache, failed; the seconds the
    computed ones took (task time, summed)."""

    computed: int
    reused: int
    failed: int
    seconds: float


def _error_path(path: Path) -> Path:
    return path.with_name(path.stem + ".error.txt")


def load_scores(root: str | Path, key: ScoreKey) -> dict[str, Any]:
    """The cached payload of ``key`` (``scores`` or ``sparsity``, and ``seconds``)."""
    path = key.path(root)
    if path.is_file():
        return torch.load(path, weights_only=True)
    error = _error_path(path)
    reason = error_summary(error.read_text()) if error.is_file() else "not computed"
    raise ScoresUnavailable(f"scores of {key.text} unavailable: {reason}")


def read_computations(root: str | Path) -> list[dict[str, Any]]:
    """Every line of the computation log, oldest first. A last line cut short (a full disk or a
    kill while it was appended) is skipped: its scores file, written atomically, is what counts.
    Any other line that is not one JSON object is a one-line error naming the log."""
    path = Path(root) / COMPUTATIONS_FILE
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is corrupt: not one JSON object a line ({err})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except ValueError as err:
            if number < len(lines):
                raise InputError(f"{path} is corrupt: not one JSON object a line ({err})") from None
    return entries


def _score_task(refs, settings, criterion: tuple[type, Mapping[str, Any]] | None, seed: int,
                strategy: str) -> dict[str, Any]:
    """Runs in a Ray worker: one criterion's scores (``criterion``: its class, as the driver's
    registry holds it, and options), or with ``criterion`` None SNPFI's utilization curves (what
    the ``snpfi`` ratio source reads)."""
    from orchestrator.experiment.worker import fetch_baseline, trial_device
    from pruning.criteria import ScoringContext, create_criterion
    from pruning.games import utilization_curve
    from pruning.pipeline import score_channels

    settings.enter()
    started = time.perf_counter()
    shared = fetch_baseline(refs, settings)
    model, space, device = shared.build_model(), shared.space, trial_device()
    context = ScoringContext(calibration=shared.batches, stats=shared.stats, device=device, task=shared.task)
    if criterion is None:
        snpfi = create_criterion("snpfi", seed=seed)
        estimates = list(snpfi.estimates(model, space.select(strategy), context))
        curves = {name: utilization_curve(game, est.values) for name, game, est in estimates}
        return {"utilization": curves, "seconds": time.perf_counter() - started}
    criterion_type, options = criterion
    scores = score_channels(criterion_type(seed=seed, **options), model, space, strategy, context)
    return {"scores": {k: v.detach().float().cpu() for k, v in scores.items()}, "seconds": time.perf_counter() - started}


def compute_scores(config: StudyConfig, baselines: Mapping[str, Any], root: str | Path, *,
                   progress: bool = True) -> ScorePhase:
    """Compute every score key of ``config`` missing from the cache ``root`` as Ray tasks
    (``baselines``: checkpoint label -> :class:`~orchestrator.studies.trial.StudyBaseline`).
    With ``execution.share_scores`` off only the SNPFI prior is computed here."""
    import ray

    from pruning.criteria import criterion_class

    root = Path(root)
    keys = [k for k in score_keys(config) if config.execution.share_scores or k.criterion == SNPFI_PRIOR]
    todo = [k for k in keys if not k.path(root).is_file()]
    if not todo:
        return ScorePhase(0, len(keys), 0, 0.0)
    criteria = {c.label: (criterion_class(c.name), dict(c.options)) for c in config.criteria}
    task = ray.remote(_score_task).options(num_cpus=config.execution.cpus_per_trial,
                                           num_gpus=config.execution.gpus_per_trial, max_retries=0)
    say(progress, f"scoring channels: {len(todo)} of {len(keys)} (checkpoint, criterion, seed) keys to compute")
    pending = {}
    for key in todo:
        _error_path(key.path(root)).unlink(missing_ok=True)
        baseline = baselines[key.checkpoint]
        pending[task.remote(baseline.refs, baseline.settings, criteria.get(key.criterion), key.seed,
                            config.pruning.strategy)] = key
    failed, seconds = 0, 0.0
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(done)
        path = key.path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            payload = ray.get(done)
        except Exception as err:  # a criterion that cannot score fails its cells, not the study
            failed += 1
            text = str(getattr(err, "cause", None) or err) or traceback.format_exc()
            atomic_write(_error_path(path), lambda tmp: tmp.write_text(text))
            line = {"key": key.text, "status": "FAILED", "error": error_summary(text)}
        else:
            seconds += payload["seconds"]
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
            line = {"key": key.text, "status": "FINISHED", "seconds": payload["seconds"]}
        with open(root / COMPUTATIONS_FILE, "a") as log:
            log.write(json.dumps(line) + "\n")
        say(progress, f"  scores {key.text}: {line['status'].lower()}"
            + (f" ({line['seconds']:.1f} s)" if "seconds" in line else f" ({line['error']})"))
    return ScorePhase(len(todo) - failed, len(keys) - len(todo), failed, seconds)
