"""A search space that crashes chosen trials, for tests of failure handling: ``crashing`` is the
``concentration`` space whose trials numbered in ``crash_trials`` raise :class:`PlantedCrash`
in the Ray worker, when the trial builds its plan.

The trial number reaches the worker as a sampled parameter, ``crash`` (a one-value integer: the
trial's number where it crashes, else -1; Optuna draws nothing for it). The class travels to the
workers by value (they cannot import this tests module), inside the built space the trial
settings hold."""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import ray.cloudpickle

from search_spaces import SpaceContext, TrialPlan, list_search_spaces, register_space
from search_spaces.concentration import ConcentrationSpace

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PlantedCrash(RuntimeError):
    """What a crashing trial raises."""


class CrashingSpace(ConcentrationSpace):
    def __init__(self, crash_trials: Sequence[int] = (), **options: Any) -> None:
        super().__init__(**options)
        self.crash_trials = tuple(int(n) for n in crash_trials)

    def _own_options(self) -> dict[str, Any]:
        return {**super()._own_options(), "crash_trials": list(self.crash_trials)}

    def define(self, trial, context: SpaceContext) -> None:
        super().define(trial, context)
        crash = trial.number if trial.number in self.crash_trials else -1
        trial.suggest_int("crash", crash, crash)

    def to_plan(self, params: Mapping[str, Any], context: SpaceContext) -> TrialPlan:
        if int(params.get("crash", -1)) >= 0:
            raise PlantedCrash(f"planted crash in trial {params['crash']}")
        return super().to_plan({k: v for k, v in params.items() if k != "crash"}, context)


if "crashing" not in list_search_spaces():
    register_space("crashing")(CrashingSpace)
