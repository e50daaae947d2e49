"""A task a user might bring, registered nowhere and built by import path (``user_tasks:bands``),
for the tests of a task of one's own (tests/ is on sys.path via conftest, as for ``user_models``).

``bands``: regress the mean brightness of each of ``bands`` horizontal bands of an 8 x 8 image
of uniform noise (generated from the data config's seed: no dataset files needed). The model
outputs one value per band (``num_classes = bands``); metrics ``mse`` (primary) and ``mae``,
both lower-is-better; targets are no class labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pruning.data import DataSplits
from pruning.tasks import Metric, MetricMeter, Task

SIDE = 8


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

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets)

    def metric_meter(self) -> MetricMeter:
        return _ErrorMeter()


def bands(**options) -> Task:
    return Bands(**options)
