"""Training, evaluation and BatchNorm recalibration loops.

Used to train the dense baselines, to fine-tune pruned models and, through
:func:`recalibrate_bn`, to score pruning candidates cheaply: EagleEye (Li et al., 2020) showed
that a pruned model's accuracy right after pruning says little until its BatchNorm running
statistics are re-estimated on a few training batches ("adaptive BN"), after which it ranks
candidates much like their accuracy after fine-tuning does.

All loops run on the device of the model's parameters (the caller moves the model; see
:mod:`pruning.devices`) and are deterministic on the CPU for a given seed, so a sweep trial can
be re-run bit for bit. :func:`train` and :func:`evaluate` take an optional ``amp`` (``"bf16"``
or ``"fp16"``, CUDA only: autocast, plus a ``GradScaler`` for fp16); without it nothing changes.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pruning.devices import Precision, images_per_pass
from pruning.errors import InputError
from pruning.tasks import Classification, Task
from pruning.utils import model_device, preserved_modes

SCHEDULES = ("cosine", "onecycle")

Batch = tuple[torch.Tensor, torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainConfig:
    """SGD (Nesterov momentum) with a per-step learning-rate schedule.

    ``schedule``: ``cosine`` anneals from ``lr`` to 0 over all steps; ``onecycle`` warms up to
    ``lr`` and anneals (:class:`torch.optim.lr_scheduler.OneCycleLR`, momentum kept fixed).
    ``batch_size`` is for whoever builds the loader; :func:`train` uses the loader it is given.
    ``max_batches_per_epoch`` cuts every epoch short, for quick runs.
    ``distill`` in [0, 1] weighs knowledge distillation from a teacher (Hinton et al. 2015):
    the loss is ``(1 - distill) * task loss + distill * task distillation loss``, the latter at
    temperature ``distill_temperature`` (classification: ``T^2 * KL(teacher_T || student_T)``, both
    distributions softened at ``T``); :func:`train` needs a ``teacher`` when ``distill > 0``. ``max_grad_norm``: every step's gradients are rescaled to
    at most this global L2 norm (None: never), which bounds a step when the loss surface of a
    heavily pruned network turns steep.
    """

    epochs: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    batch_size: int = 128
    seed: int = 0
    max_batches_per_epoch: int | None = None
    distill: float = 0.0
    distill_temperature: float = 4.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise InputError(f"TrainConfig.epochs must be an integer >= 0, got {self.epochs!r}")
        if not self.lr > 0:
            raise InputError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise InputError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"TrainConfig.schedule {self.schedule!r} is unknown; valid: {', '.join(SCHEDULES)}")
        if self.batch_size <= 0:
            raise InputError(f"TrainConfig.batch_size must be > 0, got {self.batch_size}")
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch <= 0:
            raise InputError(
                f"TrainConfig.max_batches_per_epoch must be > 0 or None, got {self.max_batches_per_epoch}"
            )
        if not 0 <= self.distill <= 1:
            raise InputError(f"TrainConfig.distill must be in [0, 1], got {self.distill}")
        if not self.distill_temperature > 0:
            raise InputError(f"TrainConfig.distill_temperature must be > 0, got {self.distill_temperature}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise InputError(f"TrainConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


@dataclass(frozen=True)
class EvalResult:
    """The task's ``metrics`` (name -> value) and mean ``loss`` over ``samples`` inputs;
    ``primary`` names the metric :attr:`score` is."""

    metrics: dict[str, float]
    loss: float
    samples: int
    primary: str

    @property
    def score(self) -> float:
        """The task's primary metric (classification: top-1 accuracy)."""
        return self.metrics[self.primary]


# long signature: pruning/recovery/stages.py passes progress, teacher, amp and task by name; they
# become one value together with that caller
def train(
    model: nn.Module,
    train_loader: DataLoader | Sequence[Batch],
    config: TrainConfig,
    *,
    progress: bool = True,
    eval_loader: Iterable[Batch] | None = None,
    teacher: nn.Module | None = None,
    amp: Precision | str | None = None,
    task: Task | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``task``'s loss (None: classification); return one dict per epoch.

    Each dict holds ``epoch`` (1-based), ``loss`` and the task's metrics (classification:
    ``accuracy``; means over the epoch's training batches), ``lr`` (of the epoch's last step) and,
    with ``eval_loader``, ``eval_loss`` and ``eval_<metric>`` for each metric. Seeds the global generators with ``config.seed`` so
    that dropout and unseeded loaders repeat too. Leaves the model's train/eval modes as they
    were. Raises ``FloatingPointError`` as soon as the loss stops being finite.
    ``teacher`` (used in eval mode, never updated) is distilled from when ``config.distill > 0``.
    ``amp``: mixed precision (a :class:`~pruning.devices.Precision` or ``"bf16"``/``"fp16"``;
    CUDA only), also for the per-epoch evaluation; None: float32.
    """
    if config.distill > 0 and teacher is None:
        raise InputError(f"TrainConfig.distill is {config.distill}: train needs a teacher model")
    task = task or Classification()
    precision = Precision.of(amp)
    precision.check(model_device(model))
    seed_everything(config.seed)
    steps_per_epoch = len(train_loader)
    if config.max_batches_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_batches_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    if total_steps == 0:
        return []
    device = model_device(model)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,  # torch refuses Nesterov without momentum
    )
    scheduler = _make_scheduler(optimizer, config, total_steps)
    scaler = precision.scaler(device)
    history = []
    with preserved_modes(model):
        for epoch in range(1, config.epochs + 1):
            model.train()
            loss_sum, seen, meter = 0.0, 0, task.metric_meter()
            batches = tqdm(
                islice(train_loader, steps_per_epoch),
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                disable=not progress,
                leave=False,
            )
            for step, (inputs, targets) in enumerate(batches, start=1):
                inputs, targets = inputs.to(device), targets.to(device)
                with precision.autocast(device):
                    outputs = model(inputs)
                    loss = task.loss(outputs, targets)
                    if config.distill > 0:
                        loss = (1 - config.distill) * loss + config.distill * _distillation_loss(
                            task, outputs, teacher, inputs, config.distill_temperature
                        )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} at epoch {epoch}, step {step}; "
                        f"try a lower learning rate than {config.lr}"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    _clip_gradients(model, config.max_grad_norm)
                    optimizer.step()
                else:  # fp16: scaled loss; a step whose gradients overflowed is skipped
                    scaler.scale(loss).backward()
                    if config.max_grad_norm is not None:
                        scaler.unscale_(optimizer)  # the norm bounds the true gradients
                    _clip_gradients(model, config.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                loss_sum += loss.item() * len(targets)
                meter.update(outputs.detach(), targets)
                seen += len(targets)
                batches.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
            record = {"epoch": epoch, "loss": loss_sum / seen, **meter.compute(), "lr": lr}
            if eval_loader is not None:
                result = evaluate(model, eval_loader, progress=progress, amp=precision, task=task)
                record.update(eval_loss=result.loss, **{f"eval_{k}": v for k, v in result.metrics.items()})
            history.append(record)
    return history


def _distillation_loss(task: Task, outputs: torch.Tensor, teacher: nn.Module, inputs: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """The task's distillation loss from the teacher's outputs (teacher in eval mode, no gradients)."""
    with torch.no_grad(), preserved_modes(teacher):
        teacher.eval()
        target = teacher(inputs)
    return task.distillation_loss(outputs, target, temperature)


def _clip_gradients(model: nn.Module, max_norm: float | None) -> None:
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        # Momentum stays at config.momentum, so both schedules honour the same config fields.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, cycle_momentum=False
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    progress: bool = False,
    max_batches: int | None = None,
    amp: Precision | str | None = None,
    task: Task | None = None,
) -> EvalResult:
    """``task``'s metrics and mean loss (None: classification's accuracy and cross-entropy) of
    ``model`` in eval mode over ``loader`` (or its first ``max_batches`` batches). Leaves the
    model's train/eval modes as they were. ``amp``: mixed-precision forward passes (CUDA only;
    the loss is summed in float32)."""
    if max_batches is not None and max_batches <= 0:
        raise InputError(f"max_batches must be > 0 or None, got {max_batches}")
    device = model_device(model)
    precision = Precision.of(amp)
    precision.check(device)
    task = task or Classification()
    loss_sum, seen, meter = 0.0, 0, task.metric_meter()
    with preserved_modes(model):
        model.eval()
        batches = tqdm(
            islice(loader, max_batches), total=_batch_count(loader, max_batches),
            desc="eval", disable=not progress, leave=False,
        )
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with precision.autocast(device):
                outputs = model(inputs)
            loss_sum += task.summed_loss(outputs.float(), targets).item()
            meter.update(outputs, targets)
            seen += len(targets)
    if seen == 0:
        raise InputError("evaluate got no batches")
    return EvalResult(metrics=meter.compute(), loss=loss_sum / seen, samples=seen, primary=task.primary)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Batch],
    num_batches: int = 50,
    *,
    progress: bool = False,
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``num_batches`` batches (adaptive
    BN, as in EagleEye); return the same ``model``.

    Running statistics are reset and accumulated as an equal-weight average over the batches
    (``momentum=None``), so they do not depend on the stale values a pruned model inherited.
    Only the BatchNorm layers run in train mode; every other module stays in eval mode, so
    e.g. dropout does not distort the statistics that inference will see. Weights are never
    touched; momentum and train/eval modes are restored afterwards.

    A batch larger than one pass holds (:func:`pruning.devices.images_per_pass`: on the CPU,
    32 images at 224 px) runs in equal slices, each one forward and one set of statistics in
    the average: every slice's are unbiased estimates of the same population's, and the
    memory stays that of a slice.
    """
    if num_batches <= 0:
        raise InputError(f"num_batches must be > 0, got {num_batches}")
    norms = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return model
    device = model_device(model)
    momenta = [norm.momentum for norm in norms]
    seen = 0
    with preserved_modes(model):
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        try:
            batches = tqdm(
                islice(loader, num_batches), total=_batch_count(loader, num_batches),
                desc="BN recalibration", disable=not progress, leave=False,
            )
            for inputs, _ in batches:
                slices = math.ceil(inputs.shape[0] / images_per_pass(device, tuple(inputs.shape[1:]), inputs.shape[0]))
                for piece in torch.tensor_split(inputs, slices):
                    model(piece.to(device))
                seen += 1
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
    if seen == 0:
        raise InputError("recalibrate_bn got no batches; the BatchNorm statistics are now reset")
    return model


def _batch_count(loader: Iterable[Batch], limit: int | None) -> int | None:
    """How many batches ``islice(loader, limit)`` yields, if the loader knows its length."""
    if not isinstance(loader, Sized):
        return limit
    return len(loader) if limit is None else min(len(loader), limit)
