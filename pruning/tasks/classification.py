"""Image classification: one class index per image, cross-entropy, top-1 accuracy.

The built-in task and the default everywhere (a checkpoint that records no task is one of it).
Its data is a registered dataset or an ``imagefolder`` (:func:`pruning.data.load_data`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pruning.tasks._base import Metric, MetricMeter, Task, register_task

__all__ = ["Classification"]


class _AccuracyMeter(MetricMeter):
    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += (outputs.argmax(1) == targets).sum().item()
        self.seen += len(targets)

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.seen}


@register_task("classification")
class Classification(Task):
    """``accuracy`` (top-1, max) is the primary metric. Distillation is Hinton et al.'s (2015)
    ``T^2 * KL(teacher_T || student_T)`` at temperature T. The games play for one of
    ``logprob`` (the mean log-probability of the true class, the negative cross-entropy; default),
    ``accuracy`` (top-1: piecewise constant, many ties, a noisier estimator), ``margin`` (the mean
    logit margin z_y - max_{j != y} z_j) or ``kl`` (minus the mean KL(p_N || p_S) from the unpruned
    network's output distribution to the coalition's: 0 for the unpruned network, no labels)."""

    metrics = (Metric("accuracy", "max"),)
    primary = "accuracy"
    class_labels = True
    game_values = ("logprob", "accuracy", "margin", "kl")
    reference_values = ("kl",)

    def load_data(self, config):
        from pruning.data import load_data

        return load_data(config)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def summed_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="sum")

    def metric_meter(self) -> MetricMeter:
        return _AccuracyMeter()

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        # the T^2 keeps the soft term's gradient scale independent of the temperature
        t = temperature
        target = F.log_softmax(teacher / t, dim=1)
        return F.kl_div(F.log_softmax(student / t, dim=1), target, reduction="batchmean", log_target=True) * t**2

    def game_reference(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(outputs.double(), dim=-1)

    def game_value(self, outputs, targets, value, reference=None):
        self.check_game_value(value)
        logits = outputs.double()
        if value == "kl":
            if reference is None:
                raise ValueError("value 'kl' needs the unpruned network's log-probabilities (reference)")
            ref = reference.double().unsqueeze(0)
            kl = (ref.exp() * (ref - torch.log_softmax(logits, dim=-1))).sum(-1).mean(1)
            # KL >= 0 exactly; round-off of two log-softmaxes of equal logits must not make v(N) > 0
            return -kl.clamp(min=0.0)
        index = targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)
        if value == "logprob":
            return torch.log_softmax(logits, dim=-1).gather(-1, index)[..., 0].mean(1)
        if value == "accuracy":
            return (logits.argmax(-1) == targets.view(1, -1)).double().mean(1)
        true = logits.gather(-1, index)[..., 0]  # margin
        others = logits.scatter(-1, index, float("-inf")).amax(-1)
        return (true - others).mean(1)
