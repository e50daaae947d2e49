"""The screening stage's search: the define-by-run function handed to ``OptunaSearch`` and the
Optuna sampler (the refinement stage's given configs: :mod:`orchestrator.experiment.fixed_configs`)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta
from orchestrator.sweeps.config import SAMPLERS
from orchestrator.sweeps.refine import STAGE_SCREEN

__all__ = ["DefineByRun", "register_context", "make_sampler"]

#: define-by-run contexts by key (a sweep's run directory): the SpaceContext stays in the driver
#: and out of the searcher's pickled state (Tune saves the searcher with every experiment snapshot)
_CONTEXTS: dict[str, Any] = {}


@contextlib.contextmanager
def register_context(key: str, context) -> Iterator[None]:
    """Make ``context`` (a :class:`~search_spaces.SpaceContext`) the one every
    :class:`DefineByRun` with this ``key`` samples in, for the duration of the block."""
    _CONTEXTS[key] = context
    try:
        yield
    finally:
        _CONTEXTS.pop(key, None)


class DefineByRun:
    """The define-by-run function handed to ``OptunaSearch``: ``space.define(trial, context)``
    (``space``: the built :class:`~search_spaces.SearchSpace`) with the context registered under
    ``key`` (:func:`register_context`). Returns the trial's
    :class:`~orchestrator.experiment.trial_meta.TrialMeta` (Optuna's trial number, which names the
    MLflow run, and the stage ``screen``), which Tune adds to the trial's config. Pickles to the
    space and the key only (Tune saves the searcher with every experiment snapshot).
    """

    def __init__(self, space, key: str) -> None:
        self.space = space
        self.key = key

    def __call__(self, trial) -> dict[str, Any]:
        context = _CONTEXTS.get(self.key)
        if context is None:
            raise RuntimeError(f"no search-space context registered for {self.key}")
        self.space.define(trial, context)
        return {META_KEY: TrialMeta(number=trial.number, stage=STAGE_SCREEN)}


def make_sampler(name: str, seed: int, population_size: int | None = None):
    """The seeded Optuna sampler of ``sweep.sampler`` (a key of :data:`SAMPLERS`);
    ``population_size`` applies to ``nsga2`` only."""
    import optuna

    if name not in SAMPLERS:
        raise ConfigError("sweep.sampler", f"must be one of {', '.join(SAMPLERS)}, got {name!r}")
    sampler_class = getattr(optuna.samplers, SAMPLERS[name], None)
    if sampler_class is None:
        raise ConfigError("sweep.sampler", f"{name} needs a newer optuna (installed: {optuna.__version__})")
    options = {"population_size": population_size} if name == "nsga2" and population_size is not None else {}
    try:
        return sampler_class(seed=seed, **options)
    except ImportError as err:  # gp: its optional dependencies are missing
        raise ConfigError("sweep.sampler", f"{name} is unavailable: {err}") from None
