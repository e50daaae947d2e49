"""Semantic segmentation on canvases composed from a classification dataset's images.

Each canvas is ``canvas_size`` pixels square, blank (the dataset's normalised zero), with
``items`` images pasted at random positions; the label map gives every pixel the class of the
item drawn on it (a pixel whose raw intensity exceeds ``threshold``; later items cover earlier
ones), class + 1, and 0 to the background. With Fashion-MNIST that is 11 classes: a real
segmentation problem built from the only real image dataset every machine here has.

A split of N source images makes N // ``items`` canvases, each image pasted once; the layout
of canvas i depends only on ``seed`` and i, so every loader, process and machine sees the same
canvases. Canvases are composed when read (a few microseconds each), not held in memory.

Metrics: ``miou`` (primary: the mean over classes of intersection over union, from one
confusion matrix over the whole pass, classes absent from both prediction and labels left out)
and ``pixel_accuracy``. The loss is the per-pixel cross-entropy; distillation is the per-pixel
``T^2 * KL(teacher_T || student_T)``.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pruning.errors import InputError
from pruning.tasks._base import Metric, MetricMeter, Task, register_task

__all__ = ["CanvasDataset", "Segmentation"]


class CanvasDataset(Dataset):
    """Canvases composed from ``images`` (``[N, C, h, w]``, normalised, class ``labels``); ``ink``:
    the normalised blank value and drawing threshold, per channel (``[C, 1, 1]`` each)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, canvas_size: int, items: int, seed: int, *,
                 ink: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.images, self.labels = images, labels
        self.canvas_size, (self.blank, self.threshold) = canvas_size, ink
        count = len(images) // items
        generator = torch.Generator().manual_seed(seed)
        self.members = torch.randperm(len(images), generator=generator)[: count * items].view(count, items)
        span = canvas_size - max(images.shape[-2:]) + 1
        self.offsets = torch.randint(0, span, (count, items, 2), generator=generator)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = self.images.shape[1:]
        canvas = self.blank.expand(channels, self.canvas_size, self.canvas_size).clone()
        label = torch.zeros(self.canvas_size, self.canvas_size, dtype=torch.long)
        for member, (top, left) in zip(self.members[index].tolist(), self.offsets[index].tolist()):
            image = self.images[member]
            drawn = (image > self.threshold).any(0)
            window = (slice(top, top + height), slice(left, left + width))
            canvas[(slice(None), *window)] = torch.where(drawn, image, canvas[(slice(None), *window)])
            label[window] = torch.where(drawn, int(self.labels[member]) + 1, label[window])
        return canvas, label


class _ConfusionMeter(MetricMeter):
    """One confusion matrix over the pass; its size is the outputs' class count."""

    confusion: torch.Tensor | None = None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.confusion is None:
            self.classes = outputs.shape[1]
            self.confusion = torch.zeros(self.classes, self.classes, dtype=torch.long)
        pairs = targets.flatten().cpu() * self.classes + outputs.argmax(1).flatten().cpu()
        self.confusion += torch.bincount(pairs, minlength=self.classes**2).view(self.classes, self.classes)

    def compute(self) -> dict[str, float]:
        if self.confusion is None:
            raise InputError("no batches to compute the segmentation metrics from")
        hits = self.confusion.diag().double()
        union = self.confusion.sum(0) + self.confusion.sum(1) - self.confusion.diag()
        present = union > 0
        return {"miou": float((hits[present] / union[present]).mean()) if present.any() else 0.0,
                "pixel_accuracy": float(hits.sum() / self.confusion.sum().clamp(min=1))}


@register_task("segmentation")
class Segmentation(Task):
    """Options: ``canvas_size`` (pixels a side, default 56), ``items`` per canvas (default 3),
    ``threshold`` (the raw intensity in [0, 1] above which a pixel belongs to its item, default
    0.1)."""

    metrics = (Metric("miou", "max"), Metric("pixel_accuracy", "max"))
    primary = "miou"

    def __init__(self, canvas_size: int = 56, items: int = 3, threshold: float = 0.1) -> None:
        if not isinstance(canvas_size, int) or canvas_size < 1:
            raise InputError(f"segmentation canvas_size must be a positive integer, got {canvas_size!r}")
        if not isinstance(items, int) or items < 1:
            raise InputError(f"segmentation items must be a positive integer, got {items!r}")
        if not 0 <= threshold < 1:
            raise InputError(f"segmentation threshold must be in [0, 1), got {threshold!r}")
        self.canvas_size, self.items, self.threshold = canvas_size, items, float(threshold)

    def load_data(self, config):
        from pruning.data import DATASETS, load_data

        splits = load_data(config)
        source = DATASETS.create(config.name, root=config.root, download=config.download,
                                 image_size=config.image_size)
        if not hasattr(source, "mean"):
            raise InputError(f"task segmentation composes canvases from an in-memory dataset, not {config.name!r}")
        if max(splits.input_size) > self.canvas_size:
            raise InputError(f"segmentation canvas_size {self.canvas_size} is smaller than the "
                             f"{splits.input_size} images of {config.name}")
        mean = torch.tensor(source.mean).view(-1, 1, 1)
        std = torch.tensor(source.std).view(-1, 1, 1)
        canvases = {}
        for offset, split in enumerate(("train", "calibration", "test")):
            dataset = getattr(splits, split)
            images, labels = dataset.tensors
            canvases[split] = CanvasDataset(images, labels, self.canvas_size, self.items, config.seed * 3 + offset,
                                            ink=(-mean / std, (self.threshold - mean) / std))
        return replace(splits, **canvases, num_classes=splits.num_classes + 1,
                       input_size=(self.canvas_size, self.canvas_size), augment_by_default=False)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none").flatten(1).mean(1)

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        t = temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                      reduction="none", log_target=True)
        return kl.sum(1).mean() * t**2

    def metric_meter(self) -> MetricMeter:
        return _ConfusionMeter()
