"""Tasks a user might bring, built by import path (``user_tasks:multilabel``) in the tests of a task
of one's own (tests/ is on sys.path via conftest, as for ``user_models``).

``multilabel``: Fashion-MNIST images with 13 independent binary labels, the item's class (10) and
its kind (top, footwear, other: 3), a sigmoid per output and binary cross-entropy; no class
labels (targets are float multi-hot vectors), one metric to minimise.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pruning.tasks import Metric, MetricMeter, Task

#: the kind of each Fashion-MNIST class: 0 top (t-shirt, pullover, dress, coat, shirt), 1 footwear, 2 other
KINDS = torch.tensor([0, 2, 0, 0, 0, 1, 0, 1, 2, 1])


class _LabelMeter(MetricMeter):
    def __init__(self) -> None:
        self.right = self.exact = self.labels = self.seen = 0
        self.bce = 0.0

    def update(self, outputs, targets):
        predicted = outputs > 0
        self.right += (predicted == targets.bool()).sum().item()
        self.exact += (predicted == targets.bool()).all(1).sum().item()
        self.bce += F.binary_cross_entropy_with_logits(outputs.float(), targets, reduction="sum").item()
        self.labels += targets.numel()
        self.seen += len(targets)

    def compute(self):
        return {"label_accuracy": self.right / self.labels, "exact_match": self.exact / self.seen,
                "bce": self.bce / self.labels}


class MultiLabel(Task):
    metrics = (Metric("label_accuracy", "max"), Metric("exact_match", "max"), Metric("bce", "min"))
    primary = "label_accuracy"

    def load_data(self, config):
        from pruning.data import load_data

        splits = load_data(config)

        def relabel(dataset):
            images, labels = dataset.tensors
            targets = torch.cat([F.one_hot(labels, 10), F.one_hot(KINDS[labels], 3)], 1).float()
            return TensorDataset(images, targets)

        return replace(splits, train=relabel(splits.train), calibration=relabel(splits.calibration),
                       test=relabel(splits.test), num_classes=13, augment_by_default=False)

    def output_shape(self, splits):
        return (splits.num_classes,)

    def loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def sample_loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean(1)

    def metric_meter(self):
        return _LabelMeter()


def multilabel() -> Task:
    return MultiLabel()


def not_a_task() -> int:
    return 3
