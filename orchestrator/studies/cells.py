"""The study grid: one :class:`Cell` per checkpoint x criterion x ratios x recipe x FLOPs target
x seed, and what cells share. Channel scores depend on (checkpoint, criterion, seed) only, so
every target, ratio source and recipe of that triple reads the same :class:`ScoreKey`; the SNPFI
layer prior (``ratios: snpfi``) is one more key per (checkpoint, seed)."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from orchestrator.experiment.trial_meta import META_KEY, TrialMeta
from orchestrator.studies.config import StudyConfig

__all__ = ["SNPFI_PRIOR", "CELL_PARAMS", "Cell", "ScoreKey", "study_cells", "score_keys"]

#: the criterion field of the score key that holds SNPFI's utilization curves (``ratios: snpfi``)
SNPFI_PRIOR = "snpfi-prior"
#: a cell's fields, in order: its MLflow params
CELL_PARAMS = ("checkpoint", "criterion", "ratios", "recipe", "flops_reduction", "seed")


@dataclass(frozen=True, order=True)
class ScoreKey:
    """What one channel-score computation depends on."""

    checkpoint: str
    criterion: str
    seed: int

    def path(self, root: str | Path) -> Path:
        """Its file in the study's score cache (``<run_dir>/scores``)."""
        return Path(root) / self.checkpoint / self.criterion / f"seed-{self.seed}.pt"

    @property
    def text(self) -> str:
        return f"{self.checkpoint}/{self.criterion}/seed-{self.seed}"


@dataclass(frozen=True, order=True)
class Cell:
    """One grid cell; the fields are labels from the config, the target and the seed."""

    checkpoint: str
    criterion: str
    ratios: str
    recipe: str
    flops_reduction: float
    seed: int

    @property
    def id(self) -> str:
        """Its MLflow run name, e.g. ``base:l1:uniform:bn:0.5:s0``."""
        return ":".join((self.checkpoint, self.criterion, self.ratios, self.recipe, f"{self.flops_reduction:g}",
                         f"s{self.seed}"))

    @property
    def score_key(self) -> ScoreKey:
        return ScoreKey(self.checkpoint, self.criterion, self.seed)

    @property
    def prior_key(self) -> ScoreKey:
        return ScoreKey(self.checkpoint, SNPFI_PRIOR, self.seed)

    def result_path(self, root: str | Path) -> Path:
        """Its saved metrics in the study's cell results (``<run_dir>/cells``)."""
        return (Path(root) / self.checkpoint / self.criterion / self.ratios / self.recipe
                / f"{self.flops_reduction:g}-s{self.seed}.json")

    def trial_config(self) -> dict[str, Any]:
        """The Tune trial config: the fields (MLflow params) and its run name."""
        return {**asdict(self), META_KEY: TrialMeta(name=self.id)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Cell:
        """From a trial config or from MLflow params (strings)."""
        return cls(str(params["checkpoint"]), str(params["criterion"]), str(params["ratios"]), str(params["recipe"]),
                   float(params["flops_reduction"]), int(params["seed"]))


def study_cells(config: StudyConfig) -> list[Cell]:
    """Every cell of the study, in a fixed order (targets and seeds innermost)."""
    return [Cell(b.label, c.label, r.label, recipe, float(t), int(s)) for b, c, r, recipe, t, s in itertools.product(
        config.checkpoints, config.criteria, config.ratios, config.recipes, config.flops_reductions, config.seeds)]


def score_keys(config: StudyConfig) -> list[ScoreKey]:
    """The score computations the study needs, each once: (checkpoint, criterion, seed), plus
    (checkpoint, SNPFI prior, seed) where a ratio source is ``snpfi``."""
    criteria = [c.label for c in config.criteria] + ([SNPFI_PRIOR] if config.ratios_need("utilization") else [])
    return [ScoreKey(b.label, c, int(s)) for b, c, s in itertools.product(config.checkpoints, criteria, config.seeds)]
