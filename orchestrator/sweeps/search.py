"""Search algorithms of sweeps: the define-by-run function handed to ``OptunaSearch``, the
Optuna sampler, and :class:`FixedConfigs` (the refinement stage's given trial configs)."""
from __future__ import annotations

import contextlib
import pickle
from typing import Any, Collection, Iterator, Mapping, Sequence

from ray.tune.search import Searcher

from orchestrator.sweeps.checks import ConfigError
from orchestrator.sweeps.config import SAMPLERS
from orchestrator.sweeps.refine import STAGE_SCREEN

__all__ = ["DefineByRun", "FixedConfigs", "register_context", "make_sampler"]

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
    with the context registered under ``key`` (:func:`register_context`).

    Returns bookkeeping constants that Tune adds to the trial's config: ``_trial_number``
    (Optuna's trial number, which names the MLflow run), ``_stage`` (``screen``) and, for trials
    selected with ``inject_failures``, ``_inject_failure``. Pickles to its plain settings only.
    """

    def __init__(self, space_name: str, space_options: Mapping[str, Any], key: str,
                 inject_failures: Collection[int] = ()) -> None:
        self.space_name = space_name
        self.space_options = dict(space_options)
        self.key = key
        self.inject_failures = tuple(sorted(set(inject_failures)))
        self._space = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_space": None}

    def __call__(self, trial) -> dict[str, Any]:
        from search_spaces import create_search_space

        if self._space is None:
            self._space = create_search_space(self.space_name, **self.space_options)
        context = _CONTEXTS.get(self.key)
        if context is None:
            raise RuntimeError(f"no search-space context registered for {self.key}")
        self._space.define(trial, context)
        extra: dict[str, Any] = {"_trial_number": trial.number, "_stage": STAGE_SCREEN}
        if trial.number in self.inject_failures:
            extra["_inject_failure"] = True
        return extra


class FixedConfigs(Searcher):
    """A Tune searcher that hands out the given trial configs, in order, then finishes.

    The refinement stage's search algorithm: its state (the configs and how many were handed out)
    is saved with every experiment snapshot, so ``Tuner.restore`` neither repeats nor skips one.
    """

    def __init__(self, configs: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self.configs = [dict(c) for c in configs]
        self.given: dict[str, int] = {}  # Tune trial id -> index into configs

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id not in self.given:
            if len(self.given) >= len(self.configs):
                return Searcher.FINISHED
            self.given[trial_id] = len(self.given)
        return dict(self.configs[self.given[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"configs": self.configs, "given": self.given}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        self.configs, self.given = state["configs"], state["given"]


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
