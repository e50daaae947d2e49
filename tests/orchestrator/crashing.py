"""A search space and a criterion that crash on purpose, for tests of failure handling:

* ``crashing`` (space): the ``concentration`` space whose trials numbered in ``crash_trials``
  raise :class:`PlantedCrash` in the Ray worker, when the trial builds its plan. The trial number
  reaches the worker as a sampled parameter, ``crash`` (a one-value integer: the trial's number
  where it crashes, else -1; Optuna draws nothing for it).
* ``crashing`` (criterion): ``l1`` that raises :class:`PlantedCrash` when it scores.

Each is registered by :func:`register_crashing_space` / :func:`register_crashing_criterion` in
the test that uses it: registered on import, it would join the spaces and criteria that the
contract tests enumerate when they are collected.

Both classes travel to the Ray workers by value (the workers cannot import this tests module):
inside the built space that a sweep's trial settings hold, and as the criterion class a study's
score task is given."""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import ray.cloudpickle

from pruning.criteria import criterion_class, list_criteria, register_criterion
from search_spaces import SpaceContext, TrialPlan, list_search_spaces, register_space, search_space_class

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PlantedCrash(RuntimeError):
    """What a crashing trial or criterion raises."""


class CrashingSpace(search_space_class("concentration")):
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


class CrashingCriterion(criterion_class("l1")):
    def score_module(self, module):
        raise PlantedCrash("planted crash in scoring")


def register_crashing_criterion() -> None:
    if "crashing" not in list_criteria():
        register_criterion("crashing")(CrashingCriterion)


def register_crashing_space() -> None:
    if "crashing" not in list_search_spaces():
        register_space("crashing")(CrashingSpace)
