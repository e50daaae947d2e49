"""Tasks a user might bring, registered nowhere and built by import path, for the tests of a task of
one's own (tests/ is on sys.path via conftest, as for ``user_models``).

``bands`` (``user_tasks:bands``): regress the mean brightness of each of ``bands`` horizontal bands
of an 8 x 8 image of uniform noise (generated from the data config's seed: no dataset files
needed). The model outputs one value per band (``num_classes = bands``); metrics ``mse``
(primary) and ``mae``, both lower-is-better; targets are no class labels.

``multilabel`` (``user_tasks:multilabel``): Fashion-MNIST images with 13 independent binary
labels, the item's class (10) and its kind (top, footwear, other: 3), a sigmoid per output and
binary cross-entropy; targets are float multi-hot vectors, no class labels; metrics in both
directions.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pruning.data import DataSplits
from pruning.tasks import Metric, MetricMeter, Task

SIDE = 8
#: the kind of each Fashion-MNIST class: 0 top (t-shirt, pullover, dress, coat, shirt), 1 footwear, 2 other
KINDS = torch.tensor([0, 2, 0, 0, 0, 1, 0, 1, 2, 1])


class _ErrorMeter(MetricMeter):
    def __init__(self) -> None:
        self.squared = self.absolute = 0.0
        self.values = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        error = outputs.float() - targets
        self.squared += float(error.pow(2).sum())
        self.absolute += float(error.abs().sum())
        self.values += error.numel()

    def compute(self) -> dict[str, float]:
        return {"mse": self.squared / self.values, "mae": self.absolute / self.values}


class Bands(Task):
    metrics = (Metric("mse", "min"), Metric("mae", "min"))
    primary = "mse"

    def __init__(self, bands: int = 4, images: int = 256, test_images: int = 64) -> None:
        if SIDE % bands:
            raise ValueError(f"bands must divide {SIDE}, got {bands}")
        self.bands, self.images, self.test_images = bands, images, test_images

    def load_data(self, config) -> DataSplits:
        generator = torch.Generator().manual_seed(config.seed)
        inputs = torch.rand(self.images + self.test_images, 1, SIDE, SIDE, generator=generator)
        targets = inputs.view(len(inputs), self.bands, -1).mean(-1)
        order = torch.randperm(self.images, generator=generator)
        calibration = order[: config.calibration_size]
        train = order[config.calibration_size:][: config.train_subset]
        test = torch.arange(self.images, self.images + self.test_images)[: config.test_subset]
        return DataSplits(train=TensorDataset(inputs[train], targets[train]),
                          calibration=TensorDataset(inputs[calibration], targets[calibration]),
                          test=TensorDataset(inputs[test], targets[test]), num_classes=self.bands, in_channels=1,
                          input_size=(SIDE, SIDE), name="bands", train_indices=train, calibration_indices=calibration)

    def output_shape(self, splits: DataSplits) -> tuple[int, ...]:
        return (self.bands,)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets)

    def metric_meter(self) -> MetricMeter:
        return _ErrorMeter()


def bands(**options) -> Task:
    return Bands(**options)


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
