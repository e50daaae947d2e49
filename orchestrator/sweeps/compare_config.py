"""The ``prunesweep compare`` configuration: a criterion x FLOPs-target x seed grid (no search)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.sweeps.checks import (
    ConfigError,
    check_choice,
    check_int,
    check_name,
    check_number,
    default_tracking_uri,
    make_absolute,
    recipe_section,
)
from orchestrator.sweeps.config import DataSettings, TrackingSettings
from orchestrator.sweeps.model_settings import ModelSettings, check_one_source
from pruning.recovery import RecoveryRecipe
from pruning.structure import STRATEGIES

__all__ = ["CompareConfig"]


@dataclass(frozen=True)
class CompareConfig:
    """``prunesweep compare``: every criterion at every FLOPs target with every seed.

    Each cell prunes with ``uniform`` allocation to the target, recovers with ``recipe`` (its seed
    replaced by the cell's) and reports calibration and test accuracy (no selection happens on
    the test split: the grid is fixed in advance).

    The baseline is ``checkpoint`` or ``model`` (a :class:`ModelSettings`), exactly one.
    """

    criteria: tuple[str, ...]
    flops_reductions: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    run_dir: str = ""
    strategy: str = "full"
    recipe: RecoveryRecipe = field(default_factory=RecoveryRecipe)
    data: DataSettings = field(default_factory=DataSettings)
    concurrency: int = 2
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings(experiment="prunesweep-compare"))
    name: str = "compare"
    checkpoint: str | None = field(default=None, kw_only=True)
    model: ModelSettings | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        from pruning.criteria import list_criteria

        if isinstance(self.model, str):
            object.__setattr__(self, "model", ModelSettings(self.model))
        check_one_source(self.checkpoint, self.model)
        if not self.criteria:
            raise ConfigError("criteria", "name at least one criterion")
        for c in self.criteria:
            check_choice("criteria", c, list_criteria())
        if len(set(self.criteria)) != len(self.criteria):
            raise ConfigError("criteria", f"must not repeat a name, got {list(self.criteria)!r}")
        if not self.flops_reductions:
            raise ConfigError("flops_reductions", "give at least one FLOPs reduction")
        for r in self.flops_reductions:
            check_number("flops_reductions", r)
            if not 0.0 < r < 1.0:
                raise ConfigError("flops_reductions", f"each must be in (0, 1), got {r!r}")
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        for s in self.seeds:
            check_int("seeds", s, lo=0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must not repeat a seed, got {list(self.seeds)!r}")
        check_choice("strategy", self.strategy, STRATEGIES)
        if not isinstance(self.recipe, RecoveryRecipe):
            raise ConfigError("recipe", f"must be a RecoveryRecipe, got {type(self.recipe).__name__}")
        check_int("concurrency", self.concurrency, lo=1)
        check_number("cpus_per_trial", self.cpus_per_trial, positive=True)
        if check_number("gpus_per_trial", self.gpus_per_trial) < 0:
            raise ConfigError("gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial!r}")
        check_name(self.name)
        if not self.run_dir:
            object.__setattr__(self, "run_dir", make_absolute(str(Path("runs") / "compare" / self.name)))
        if self.tracking.uri is None:
            object.__setattr__(self, "tracking", replace(self.tracking, uri=default_tracking_uri(self.run_dir)))

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri  # type: ignore[return-value]

    @property
    def source(self) -> str | ModelSettings:
        """The baseline: the checkpoint path or the :class:`ModelSettings`."""
        return self.checkpoint if self.checkpoint is not None else self.model  # type: ignore[return-value]

    @property
    def trials(self) -> int:
        return len(self.criteria) * len(self.flops_reductions) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **({"checkpoint": self.checkpoint} if self.model is None else self.model.to_dict()),
            "criteria": list(self.criteria),
            "flops_reductions": list(self.flops_reductions),
            "seeds": list(self.seeds),
            "strategy": self.strategy,
            "recipe": recipe_section(self.recipe),
            "data": self.data.to_dict(),
            "concurrency": self.concurrency,
            "cpus_per_trial": self.cpus_per_trial,
            **({"gpus_per_trial": self.gpus_per_trial} if self.gpus_per_trial else {}),
            "tracking": {"uri": self.tracking_uri, "experiment": self.tracking.experiment},
            "run_dir": self.run_dir,
        }
