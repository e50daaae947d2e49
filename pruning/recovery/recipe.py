"""The one recovery recipe: what happens to a pruned model before it is scored.

Every caller (``prunesweep prune``, a sweep trial, a compare cell, every benchmark) runs the
same :func:`recover` with a :class:`RecoveryRecipe`, so "prune, then one fine-tune epoch" is one
operation everywhere. The stages, in this order, each optional:

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

import time
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import cycle, islice
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pruning.data import Batch, make_loader
from pruning.devices import Precision
from pruning.errors import InputError
from pruning.pipeline import PruneOutcome
from pruning.recovery.least_squares import RowBudget
from pruning.recovery.progressive import STEP_ORDERS, Rescorer, StepResult, prune_step, step_widths
from pruning.recovery.reconstruction import ReconstructionReport, consumers_of, kept_outputs_of, reconstruct_consumers
from pruning.recovery.targets import OriginalTargets, original_targets
from pruning.structure import PruningSpace
from pruning.tasks import Classification, Task
from pruning.training import EvalResult, TrainConfig, evaluate, recalibrate_bn, train
from pruning.utils import model_device

__all__ = ["BN_DATA", "STAGES", "RENAMED_KEYS", "RecipeError", "RecoveryRecipe", "RecoveryData", "RecoveryResult", "recover",
           "recovery_data_for", "reconstruction_targets"]

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


@dataclass(frozen=True)
class RecoveryData:
    """The data a recipe may read.

    calibration: the calibration batches (reconstruction; BN with ``bn_data="calibration"``).
    train: the training split (BN with ``bn_data="train"``; fine-tuning); may be None when the
        recipe reads no training data.
    augment: whether the training split's standard augmentation exists (``DataSplits.
        augment_by_default``); the recipe's ``finetune_augment`` switches it on for fine-tuning.
    score: the loader every stage's score (the task's primary metric) is measured on (the
        calibration split in a sweep, the test split in the CLI and benchmarks); None: stages are
        not scored.
    score_every_stage: score each stage that ran (False: the last one only, which is all a
        screening trial needs; a scoring pass costs as much as BN recalibration).
    targets: the unpruned model's reconstruction targets on ``calibration``
        (:func:`reconstruction_targets`), computed once for every pruning of the same model; a
        recipe whose row budget or seed differs from theirs computes its own.
    rescorer: scores the channels of the partly pruned model between the steps of a recipe with
        ``steps > 1`` (:class:`~pruning.recovery.progressive.Rescorer`: the criterion that made
        the plan); a one-shot recipe reads none.
    task: what fine-tuning trains for and scoring measures (:mod:`pruning.tasks`).
    """

    calibration: Sequence[Batch]
    train: Dataset | None = None
    augment: bool = False
    score: Iterable[Batch] | None = None
    score_every_stage: bool = True
    targets: OriginalTargets | None = None
    rescorer: Rescorer | None = None
    task: Task = field(default_factory=Classification)


def reconstruction_targets(original: nn.Module, space: PruningSpace, calibration: Sequence[Batch],
                           recipe: RecoveryRecipe, *, progress: bool = False) -> OriginalTargets:
    """The reconstruction targets of every layer that reads a group of ``space`` (whatever a
    pruning of ``original`` refits), with ``recipe``'s row budget and seed: one forward of the
    unpruned model, shared by every trial that prunes it instead of one per trial."""
    layers = consumers_of(space, [group.name for group in space.groups])
    return original_targets(original, layers, calibration, budget=_row_budget(recipe), seed=recipe.seed,
                            progress=progress)


def _row_budget(recipe: RecoveryRecipe) -> RowBudget:
    return RowBudget.with_floor(recipe.reconstruct_rows)


@dataclass(frozen=True)
class RecoveryResult:
    """scores: the task's primary metric (``metric``) on the score loader after each stage that ran, in :data:`STAGES` order
    (empty when ``RecoveryData.score`` is None; the last stage only without
    ``RecoveryData.score_every_stage``); seconds: the wall time of each stage (scoring
    excluded); reconstruction: the per-layer reports of the (last) reconstruction stage.
    outcome: the pruned model and its channels (the outcome passed in for a one-shot recipe;
    for a progressive one the model of its last step, the kept indices of the unpruned model's
    channels); steps: one :class:`StepResult` per step of a progressive recipe (empty: one shot);
    the stages after the last step are the ``scores`` and ``seconds`` above. final_metrics: every
    metric of the task as the last stage scored measured it (empty when none was scored)."""

    scores: dict[str, float]
    seconds: dict[str, float]
    reconstruction: dict[str, ReconstructionReport]
    outcome: PruneOutcome
    steps: tuple[StepResult, ...] = ()
    metric: str = "accuracy"
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def final_score(self) -> float | None:
        return next(reversed(self.scores.values()), None)

    @property
    def model(self) -> nn.Module:
        return self.outcome.model

    @property
    def total_seconds(self) -> float:
        """The wall time of every stage of every step (scoring excluded)."""
        return sum(self.seconds.values()) + sum(sum(step.seconds.values()) for step in self.steps)

    def step_metrics(self) -> dict[str, float]:
        """The steps as flat metrics: ``step<N>_macs_reduction``, ``step<N>_<stage>_seconds``,
        ``step<N>_<metric>`` (where scored)."""
        metrics: dict[str, float] = {}
        for step in self.steps:
            metrics[f"step{step.number}_macs_reduction"] = step.macs_reduction
            metrics.update({f"step{step.number}_{stage}_seconds": s for stage, s in step.seconds.items()})
            if step.score is not None:
                metrics[f"step{step.number}_{self.metric}"] = step.score
        return metrics


class _Stages:
    """The recovery stages of one recipe on the models of one recovery (see :func:`recover`)."""

    def __init__(self, original: nn.Module, recipe: RecoveryRecipe, data: RecoveryData, precision: Precision,
                 progress: bool) -> None:
        self.original, self.recipe, self.data = original, recipe, data
        self.precision, self.progress = precision, progress

    def score(self, model: nn.Module) -> EvalResult:
        return evaluate(model, self.data.score, progress=self.progress, amp=self.precision, task=self.data.task)

    def reconstruct(self, outcome: PruneOutcome) -> dict[str, ReconstructionReport]:
        recipe, data = self.recipe, self.data
        budget, targets = _row_budget(recipe), data.targets
        if targets is not None and (targets.budget != budget or targets.seed != recipe.seed):
            targets = None
        return reconstruct_consumers(
            self.original, outcome.model, consumers_of(outcome.space, outcome.kept_indices), data.calibration,
            ridge=recipe.ridge, kept_outputs=kept_outputs_of(outcome.space, outcome.kept_indices),
            seed=recipe.seed, progress=self.progress, budget=budget, targets=targets,
        )

    def recalibrate(self, model: nn.Module) -> None:
        recipe = self.recipe
        if recipe.bn_data == "calibration":
            batches: Iterable[Batch] = islice(cycle(self.data.calibration), recipe.bn_batches)
        else:
            batches = make_loader(self.data.train, recipe.batch_size, shuffle=True, seed=recipe.seed)
        recalibrate_bn(model, batches, recipe.bn_batches, progress=self.progress)

    def finetune(self, model: nn.Module, epochs: int, subset: Dataset, seed: int) -> None:
        recipe = self.recipe
        config = TrainConfig(
            epochs=epochs, lr=recipe.finetune_lr, weight_decay=recipe.weight_decay,
            batch_size=recipe.batch_size, seed=seed, distill=recipe.distill,
            distill_temperature=recipe.distill_temperature,
            max_grad_norm=recipe.finetune_max_grad_norm,
        )
        loader = make_loader(subset, recipe.batch_size, shuffle=True, seed=seed,
                             augment=recipe.finetune_augment and self.data.augment,
                             pin_memory=model_device(model).type == "cuda")
        train(model, loader, config, progress=self.progress, teacher=self.original if recipe.distill > 0 else None,
              amp=self.precision, task=self.data.task)

    def between_steps(self, outcome: PruneOutcome, number: int) -> dict[str, float]:
        """Reconstruction, BN recalibration and the step fine-tune after step ``number``."""
        recipe, seconds = self.recipe, {}
        if recipe.reconstruct:
            started = time.perf_counter()
            self.reconstruct(outcome)
            seconds["reconstructed"] = time.perf_counter() - started
        if recipe.bn_batches:
            started = time.perf_counter()
            self.recalibrate(outcome.model)
            seconds["bn_recalibrated"] = time.perf_counter() - started
        if recipe.step_finetune_batches:
            started = time.perf_counter()
            # different images after every step: a seeded draw of the batches' worth of the split
            draw = torch.Generator().manual_seed(recipe.seed * 1009 + number)
            size = min(recipe.step_finetune_batches * recipe.batch_size, len(self.data.train))
            images = torch.randperm(len(self.data.train), generator=draw)[:size].tolist()
            self.finetune(outcome.model, 1, Subset(self.data.train, images), recipe.seed + number)
            seconds["finetuned"] = time.perf_counter() - started
        return seconds


def recover(
    original: nn.Module,
    outcome: PruneOutcome,
    recipe: RecoveryRecipe,
    data: RecoveryData,
    *,
    progress: bool = False,
    amp: Precision | str | None = None,
) -> RecoveryResult:
    """Run ``recipe`` on ``outcome`` (a pruning of ``original``, the unpruned model: the
    reconstruction target and the distillation teacher; never changed). A one-shot recipe
    changes ``outcome.model`` in place; a progressive one (``steps > 1``) prunes ``original``
    again, in steps, to ``outcome.keep``, ``outcome.scores`` ranking the first step's channels
    and ``data.rescorer`` the later ones'. The recovered model is ``result.model``. Raises
    ``ValueError`` before any stage runs when the data the recipe needs is missing.

    Every stage runs on the device of the models (the caller puts ``original`` and the pruned
    model on the same one); ``amp`` (``"bf16"``/``"fp16"``, CUDA only) is the mixed precision of
    fine-tuning and scoring (reconstruction and BN recalibration stay in float32)."""
    precision = Precision.of(amp)
    precision.check(model_device(outcome.model))
    needs_train = (recipe.finetune_epochs > 0 or (recipe.bn_batches > 0 and recipe.bn_data == "train")
                   or (recipe.steps > 1 and recipe.step_finetune_batches > 0))
    if needs_train and data.train is None:
        raise InputError("the recovery recipe reads training data (BN on train or fine-tuning) but none was given")
    if (recipe.reconstruct or recipe.bn_data == "calibration") and not data.calibration:
        raise InputError("the recovery recipe reads calibration batches but none were given")
    if recipe.steps > 1 and data.rescorer is None:
        raise InputError(f"the recovery recipe prunes in {recipe.steps} steps and re-scores channels between them, "
                         "but no rescorer (the criterion) was given")
    stages = _Stages(original, recipe, data, precision, progress)
    scored_steps = data.score is not None and data.score_every_stage
    widths = step_widths(outcome.space, outcome.keep, recipe.steps, recipe.step_order)
    steps: list[StepResult] = []
    if len(widths) > 1:
        plan, current = outcome, PruneOutcome(original, outcome.space, {}, {}, outcome.scores)
        for number, step in enumerate(widths, 1):
            current, seconds = prune_step(current, step, data.rescorer, plan.scores if number == 1 else None)
            score = None
            if number < len(widths):
                seconds.update(stages.between_steps(current, number))
                score = stages.score(current.model).score if scored_steps else None
            steps.append(StepResult(number, outcome.space.reduction(step), seconds, score))
        outcome = replace(current, keep=dict(plan.keep))
    pruned = outcome.model
    evaluations: dict[str, EvalResult] = {}
    seconds: dict[str, float] = {}
    reports: dict[str, ReconstructionReport] = {}

    last = recipe.stages[-1]

    def done(stage: str, started: float) -> None:
        seconds[stage] = time.perf_counter() - started
        if data.score is not None and (data.score_every_stage or stage == last):
            evaluations[stage] = stages.score(pruned)

    done("pruned", time.perf_counter())
    if recipe.reconstruct:
        started = time.perf_counter()
        reports = stages.reconstruct(outcome)
        done("reconstructed", started)
    if recipe.bn_batches:
        started = time.perf_counter()
        stages.recalibrate(pruned)
        done("bn_recalibrated", started)
    if recipe.finetune_epochs:
        started = time.perf_counter()
        subset = data.train
        if recipe.finetune_subset is not None:
            subset = Subset(data.train, range(min(recipe.finetune_subset, len(data.train))))
        stages.finetune(pruned, recipe.finetune_epochs, subset, recipe.seed)
        done("finetuned", started)
    scores = {stage: evaluation.score for stage, evaluation in evaluations.items()}
    final = next(reversed(evaluations.values()), None)
    return RecoveryResult(scores, seconds, reports, outcome, tuple(steps), data.task.primary,
                          final.metrics if final is not None else {})


def recovery_data_for(splits: Any, calibration: Sequence[Batch], score: Iterable[Batch] | None,
                      *, task: Task | None = None, **options: Any) -> RecoveryData:
    """:class:`RecoveryData` from a :class:`~pruning.data.DataSplits` (``task`` None: classification);
    ``options``: its other fields (``score_every_stage``, ``targets``, ``rescorer``)."""
    return RecoveryData(calibration=calibration, train=splits.train, augment=splits.augment_by_default, score=score,
                        task=task or Classification(), **options)

