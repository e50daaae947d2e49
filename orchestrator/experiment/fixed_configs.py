"""The search algorithm of a fixed list of trial configs: a study's grid, a two-stage sweep's
refinement candidates."""
from __future__ import annotations

import pickle
from typing import Any, Mapping, Sequence

from ray.tune.search import Searcher

__all__ = ["FixedConfigs"]


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
