"""Running a recovery recipe (:class:`~pruning.recovery.RecoveryRecipe`, from
:mod:`pruning.recovery.recipe`) on a pruned model: :func:`recover`, the one post-pruning path,
its stages in the recipe's order (and, with ``steps > 1``, the steps of
:mod:`pruning.recovery.progressive` before them), the data they read (:class:`RecoveryData`) and
what they report (:class:`RecoveryResult`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from itertools import cycle, islice
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pruning.data import Batch, make_loader
from pruning.devices import Precision
from pruning.errors import InputError
from pruning.pipeline import PruneOutcome
from pruning.recovery.least_squares import RowBudget
from pruning.recovery.progressive import Rescorer, StepResult, prune_step, step_widths
from pruning.recovery.recipe import RecoveryRecipe
from pruning.recovery.reconstruction import ReconstructionReport, consumers_of, kept_outputs_of, reconstruct_consumers
from pruning.recovery.targets import OriginalTargets, original_targets
from pruning.structure import PruningSpace
from pruning.tasks import Classification, Task
from pruning.training import EvalResult, TrainConfig, evaluate, recalibrate_bn, train
from pruning.utils import model_device

__all__ = ["RecoveryData", "RecoveryResult", "recover", "recovery_data_for", "reconstruction_targets"]


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
    """scores: the task's primary metric (``metric``) on the score loader after each stage that ran, in :data:`~pruning.recovery.STAGES` order
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

