"""Two-stage sweeps: the ``sweep.refine`` settings and the choice of the screening trials to refine.

A two-stage sweep screens ``sweep.trials`` Optuna trials with a cheap recipe (no fine-tuning:
the proxy is the calibration score after reconstruction and BN recalibration), then refines
``candidates`` of them, chosen from the screening Pareto front by :func:`select_candidates`,
with the refinement recipe (the config's recipe + ``sweep.refine.recipe``); where that lists
several ``steps`` (``[1, 4]``: one shot and progressive), every candidate is refined once with
each (:func:`refine_variants`). With
``sweep.refine.targets`` (MACs reductions a user deploys at) the best screening trial at each
target is refined first. The final front is built from the refined trials only. Plain data here; the stages run in ``orchestrator.sweeps.sweep``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from orchestrator.experiment.checks import ConfigError, check_int, check_keys, check_mapping, recipe_from_section
from orchestrator.sweeps.front import eligible, pareto_front
from orchestrator.sweeps.objectives import COSTS, best_first

__all__ = ["STAGE_SCREEN", "STAGE_REFINE", "REFINE_RECIPE", "REFINE_EXPERIMENT", "CANDIDATES_FILE", "RefineSettings",
           "select_candidates", "refine_recipe", "refine_variants"]

STAGE_SCREEN = "screen"
STAGE_REFINE = "refine"
#: the refinement recipe's overrides of the config's recipe unless ``sweep.refine.recipe`` sets them
REFINE_RECIPE = {"finetune_epochs": 1, "distill": 0.5}
#: the refinement stage's Tune experiment folder inside a run directory
REFINE_EXPERIMENT = "tune-refine"
#: the refinement stage's trial configs, written when it starts (read back by a resume)
CANDIDATES_FILE = "refine-candidates.json"
#: a screening trial "reaches" a MACs-reduction target within this margin (the FLOPs planner's
#: own tolerance is 1 point; trials planned at exactly the target land within a few tenths)
TARGET_MARGIN = 0.005


@dataclass(frozen=True)
class RefineSettings:
    """``sweep.refine``: the refinement stage of a two-stage sweep.

    candidates: screening trials to refine (0: a single-stage sweep, as without ``refine``).
    recipe: overrides of the config's ``recipe:`` for the refined trials (its keys, validated;
        resolved with :data:`REFINE_RECIPE` for the keys it does not set). ``steps`` alone may be
        a list: every candidate is then refined once per listed value.
    targets: MACs reductions in (0, 1): for each, the ``per_target`` most accurate screening
        trials that reach it are refined first (see :func:`select_candidates`); at most
        ``candidates`` in all.
    per_target: trials refined per target (the proxy ranks the few best at one target less well
        than it ranks the whole front: docs/benchmarks.md, "A sweep against one-shot pruning").
    concurrency: refined trials run at a time (None: ``sweep.concurrency``). More than
        ``sweep.concurrency`` shares the stage's resources between them (each trial asks for
        ``sweep.concurrency / concurrency`` of a screening trial's CPUs and GPUs): three
        fine-tunes on two cores then take 1.5 trial times instead of two rounds.
    """

    candidates: int = 0
    recipe: Mapping[str, Any] = field(default_factory=lambda: dict(REFINE_RECIPE))
    targets: Sequence[float] = ()
    per_target: int = 1
    concurrency: int | None = None

    def __post_init__(self) -> None:
        check_int("sweep.refine.candidates", self.candidates, lo=0)
        check_int("sweep.refine.concurrency", self.concurrency, lo=1, optional=True)
        if isinstance(self.targets, (str, bytes)) or not isinstance(self.targets, Sequence):
            raise ConfigError("sweep.refine.targets", f"must be a list of MACs reductions, got {self.targets!r}")
        for target in self.targets:
            if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
                raise ConfigError("sweep.refine.targets", f"must hold MACs reductions in (0, 1), got {target!r}")
        check_int("sweep.refine.per_target", self.per_target, lo=1)
        if len(self.targets) * self.per_target > self.candidates:
            raise ConfigError("sweep.refine.targets",
                              f"{len(self.targets)} targets x {self.per_target} per target need at least as many "
                              f"candidates, got {self.candidates}")
        object.__setattr__(self, "targets", tuple(float(t) for t in self.targets))
        overrides = {**REFINE_RECIPE, **check_mapping("sweep.refine.recipe", self.recipe)}
        for key, value in overrides.items():
            if isinstance(value, (list, tuple)) and key != "steps":
                raise ConfigError(f"sweep.refine.recipe.{key}", f"only steps may be a list, got {value!r}")
        steps = overrides.get("steps")
        if isinstance(steps, (list, tuple)):
            if not steps or len(set(map(repr, steps))) < len(steps):
                raise ConfigError("sweep.refine.recipe.steps", f"must list distinct step counts, got {steps!r}")
            steps = list(steps)
            overrides["steps"] = steps
        for value in steps if isinstance(steps, list) else [steps]:  # every key and value checked
            recipe_from_section({**overrides, **({} if value is None else {"steps": value})}, "sweep.seed",
                                key="sweep.refine.recipe")
        object.__setattr__(self, "recipe", overrides)

    @property
    def enabled(self) -> bool:
        return self.candidates > 0

    @property
    def listed_steps(self) -> tuple[int, ...] | None:
        """The step counts every candidate is refined with, where ``recipe.steps`` lists them."""
        steps = self.recipe.get("steps")
        return tuple(steps) if isinstance(steps, list) else None

    @classmethod
    def from_dict(cls, data: Any) -> RefineSettings:
        data = check_mapping("sweep.refine", data)
        check_keys("sweep.refine.", data, [f.name for f in fields(cls)])
        values = dict(data)
        if values.get("recipe") is None:
            values.pop("recipe", None)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "recipe": dict(self.recipe), "targets": list(self.targets),
                "per_target": self.per_target, "concurrency": self.concurrency}


def _spread(order: Sequence[int], count: int) -> list[int]:
    """``count`` of ``order`` at evenly spaced ranks (its quantiles); the middle one for 1."""
    if count >= len(order):
        return list(order)
    if count == 1:
        return [order[(len(order) - 1) // 2]]
    return [order[round(i * (len(order) - 1) / (count - 1))] for i in range(count)]


def select_candidates(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str], count: int,
                      *, key: str = "params", targets: Sequence[float] = (), per_target: int = 1) -> list[int]:
    """Indices of the ``count`` screening points to refine.

    Only eligible points (feasible, every objective finite) with distinct ``points[i][key]``
    count. First, for each of ``targets``, the ``per_target`` best points (by the first task
    metric among ``objectives``, e.g. accuracy or mIoU) whose
    ``macs_reduction`` reaches it (within :data:`TARGET_MARGIN`; none: the target is skipped). The rest are
    layered into successive non-dominated fronts. From the first front, ``count`` points spread
    over its cost range (evenly spaced quantiles of the first cost objective, MACs by default);
    a front with fewer points is taken whole and the rest is filled, spread the same way, from
    the next layers. Deterministic; fewer than ``count`` only when fewer points are eligible.
    """
    if count <= 0:
        return []
    cost = next((k for k in objectives if k in COSTS), None)
    better = best_first(objectives)

    def ranked(i: int) -> tuple[float, int]:
        return better(points[i]), i
    seen: set = set()
    pool: list[int] = []
    for i, point in enumerate(points):
        signature = repr(sorted(dict(point.get(key) or {}).items()))
        if eligible(point, objectives) and signature not in seen:
            seen.add(signature)
            pool.append(i)
    chosen: list[int] = []
    for target in targets:
        reaching = [i for i in pool if i not in chosen and float(points[i].get("macs_reduction", 0.0)) >= target - TARGET_MARGIN]
        reaching.sort(key=ranked)
        chosen.extend(reaching[:max(0, min(per_target, count - len(chosen)))])
    pool = [i for i in pool if i not in chosen]
    while pool and len(chosen) < count:
        layer = [pool[j] for j in pareto_front([points[i] for i in pool], objectives)]
        if cost is not None:
            layer.sort(key=lambda i: (float(points[i][cost]), i))
        else:
            layer.sort(key=ranked)
        chosen.extend(_spread(layer, count - len(chosen)))
        pool = [i for i in pool if i not in set(layer)]
    return chosen


def refine_recipe(recipe, settings: RefineSettings):
    """The refinement recipe: the config's ``recipe`` with ``settings.recipe`` replacing its values
    (where ``steps`` is a list, its first value: a refined trial replaces it by its own)."""
    from dataclasses import replace

    from pruning.errors import InputError

    overrides = dict(settings.recipe)
    listed = settings.listed_steps
    if listed is not None:
        overrides["steps"] = listed[0]
    try:
        return replace(recipe, **overrides)
    except InputError as err:
        raise ConfigError("sweep.refine.recipe", str(err).strip().splitlines()[0]) from None


def refine_variants(settings: RefineSettings) -> list[tuple[int | None, str]]:
    """(step count, run-name suffix) of each refinement of one candidate: ``(None, "")`` once
    (the refinement recipe as it is), or one per value ``sweep.refine.recipe.steps`` lists
    (``(4, "-s4")``: the trial ``refine-007-s4``)."""
    listed = settings.listed_steps
    if listed is None:
        return [(None, "")]
    return [(steps, f"-s{steps}") for steps in listed]
