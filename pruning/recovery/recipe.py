"""The one recovery recipe: what happens to a pruned model before it is scored.

Every caller (``prunesweep prune``, a sweep trial, a compare cell, every benchmark) runs the
same :func:`~pruning.recovery.recover` (:mod:`pruning.recovery.stages`) with a
:class:`RecoveryRecipe`, so "prune, then one fine-tune epoch" is one operation everywhere. The stages, in this order, each optional:

1. **reconstruct**: least-squares reconstruction of every layer that reads pruned channels, so
   that its output on the calibration batches matches the unpruned network's (the reconstruction
   step of channel pruning, He et al. 2017 / ThiNet; our reading of SNPFI's "recovery without
   retraining"; :func:`~pruning.recovery.reconstruct_consumers`).
2. **bn_recalibrated**: BatchNorm running statistics re-estimated (adaptive BN, EagleEye) on
   ``bn_batches`` batches of ``bn_data``: ``"train"`` (shuffled training images, no
   augmentation) or ``"calibration"`` (the calibration batches, cycled).
3. **finetuned**: ``finetune_epochs`` epochs of SGD over the training split (or its first
   ``finetune_subset`` images), with the dataset's standard augmentation when
   ``finetune_augment``; with ``distill > 0`` the unpruned model is the teacher, its and the
   pruned model's outputs softened at ``distill_temperature``. Every step's
   gradients are clipped to the global norm ``finetune_max_grad_norm`` (None: not clipped): a
   network pruned to a few channels in some layers can take a step that its accuracy does not
   survive (measured on VGG-16: benchmarks/results/vgg16_fmnist_finetune_clip_*.json), and the
   bound leaves ordinary steps alone.

With ``steps > 1`` the recipe prunes progressively (:mod:`pruning.recovery.progressive`): the
plan's widths are reached in ``steps`` prunings, ``step_order`` says which layers each takes, and
reconstruction, BN recalibration and ``step_finetune_batches`` SGD batches run between them, the
channels re-scored on the partly pruned model every time; the stages above then follow the last
step. ``steps: 1`` is the one-shot pipeline.

The defaults are the best pipeline measured (docs/benchmarks.md, "What the recovery recipe
buys"): reconstruction on, BN recalibration on 20 training batches, no fine-tuning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from pruning.errors import InputError
from pruning.recovery.least_squares import RowBudget
from pruning.recovery.progressive import STEP_ORDERS

__all__ = ["BN_DATA", "STAGES", "RENAMED_KEYS", "RecipeError", "RecoveryRecipe"]

BN_DATA = ("train", "calibration")
#: stage names, in the order they run; ``pruned`` is the accuracy before any of them
STAGES = ("pruned", "reconstructed", "bn_recalibrated", "finetuned")
#: recipe keys that were renamed -> their new name
RENAMED_KEYS = {"temperature": "distill_temperature"}


class RecipeError(InputError):
    """An invalid recipe value: ``field`` names it and ``reason`` says what is wrong, so that a
    caller can name the field in its own words (a command-line option, a config key path)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"recipe {field} {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class RecoveryRecipe:
    """Which recovery stages run, and how (see the module docstring)."""

    reconstruct: bool = True
    ridge: float = 1e-3
    #: rows per column every reconstruction fit samples at least (``RowBudget.min_rows_per_column``):
    #: the accuracy floor; fewer make late layers at 224 px cheaper to fit and the fits less exact
    reconstruct_rows: float = RowBudget.min_rows_per_column
    bn_batches: int = 20
    bn_data: str = "train"
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4
    finetune_subset: int | None = None
    finetune_augment: bool = True
    finetune_max_grad_norm: float | None = 5.0
    distill: float = 0.0
    #: the temperature that softens the teacher's and the student's outputs in distillation
    distill_temperature: float = 4.0
    batch_size: int = 128
    seed: int = 0
    #: prunings that reach the plan's widths (1: one shot); see :mod:`pruning.recovery.progressive`
    steps: int = 1
    #: which layers each step prunes: ``together`` (all, a little each step) or ``from_input``
    step_order: str = "together"
    #: SGD batches of fine-tuning after each step but the last (0: none)
    step_finetune_batches: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("step_finetune_batches", self.step_finetune_batches, 0)
        if self.step_order not in STEP_ORDERS:
            raise RecipeError("step_order", f"{self.step_order!r} is unknown; valid: {', '.join(STEP_ORDERS)}")
        _check_int("bn_batches", self.bn_batches, 0)
        _check_int("finetune_epochs", self.finetune_epochs, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, None)
        if self.finetune_subset is not None:
            _check_int("finetune_subset", self.finetune_subset, 1)
        for name in ("reconstruct", "finetune_augment"):
            if not isinstance(getattr(self, name), bool):
                raise RecipeError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.bn_data not in BN_DATA:
            raise RecipeError("bn_data", f"{self.bn_data!r} is unknown; valid: {', '.join(BN_DATA)}")
        if not self.ridge >= 0:
            raise RecipeError("ridge", f"must be >= 0, got {self.ridge}")
        if isinstance(self.reconstruct_rows, bool) or not (
                isinstance(self.reconstruct_rows, (int, float)) and 0 <= self.reconstruct_rows <= 1024):
            raise RecipeError("reconstruct_rows", f"must be a number in [0, 1024], got {self.reconstruct_rows!r}")
        if not self.finetune_lr > 0:
            raise RecipeError("finetune_lr", f"must be > 0, got {self.finetune_lr}")
        if not self.weight_decay >= 0:
            raise RecipeError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.finetune_max_grad_norm is not None and not (
                isinstance(self.finetune_max_grad_norm, (int, float)) and self.finetune_max_grad_norm > 0):
            raise RecipeError("finetune_max_grad_norm", f"must be > 0 or null, got {self.finetune_max_grad_norm!r}")
        if not 0 <= self.distill <= 1:
            raise RecipeError("distill", f"must be in [0, 1], got {self.distill}")
        if not self.distill_temperature > 0:
            raise RecipeError("distill_temperature", f"must be > 0, got {self.distill_temperature}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RecoveryRecipe":
        """A recipe from plain data (a YAML mapping); unknown keys are refused by name, a renamed one
        with its new name."""
        renamed = [k for k in data if k in RENAMED_KEYS]
        if renamed:
            raise InputError(f"recipe key {renamed[0]} is now {RENAMED_KEYS[renamed[0]]}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise InputError(f"unknown recipe key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this recipe runs, ``pruned`` first."""
        ran = (True, self.reconstruct, self.bn_batches > 0, self.finetune_epochs > 0)
        return tuple(stage for stage, on in zip(STAGES, ran) if on)


def _check_int(name: str, value: Any, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise RecipeError(name, f"must be an integer{bound}, got {value!r}")
