"""Which dataset to load and the three disjoint splits every pruning run needs:

* ``train``: for (re)training and fine-tuning,
* ``calibration``: ``calibration_size`` images held out of the *training* split, chosen by
  ``seed`` and never trained on; criteria use it for activation statistics and the search
  uses it to score candidates, so the test split stays untouched until the final report,
* ``test``: the dataset's official test (or validation) split.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from pruning.data.loaders import Batch, make_loader
from pruning.data.sources import DATASETS
from pruning.errors import InputError

__all__ = ["DataConfig", "DataSplits", "load_data", "calibration_batches", "recorded_data_fields"]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split it.

    ``root=None`` means the dataset's default root (only ``fashion-mnist`` has one).
    ``train_subset`` / ``test_subset`` keep only the first N images of the (remaining)
    training / test split, for quick runs. ``image_size`` applies to ``imagefolder`` only: every
    image is resized and centre-cropped to ``image_size`` x ``image_size`` (None: 224).
    """

    name: str = "fashion-mnist"
    root: str | None = None
    download: bool = False
    calibration_size: int = 2000
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        DATASETS.get(self.name)  # UnknownNameError listing the valid names
        for field_name in ("calibration_size", "train_subset", "test_subset"):
            value = getattr(self, field_name)
            if value is not None and value < 0:
                raise InputError(f"DataConfig.{field_name} must be >= 0, got {value}")
        if self.image_size is not None:
            if self.name != "imagefolder":
                raise InputError(
                    f"DataConfig.image_size applies only to imagefolder, not {self.name!r}"
                )
            if self.image_size <= 0:
                raise InputError(f"DataConfig.image_size must be > 0, got {self.image_size}")


@dataclass
class DataSplits:
    """The three splits plus what a model needs to know about its input.

    ``train_indices`` / ``calibration_indices`` index the dataset's original training split,
    so a run can record exactly which images it held out. ``augment_by_default`` says whether
    training on this dataset conventionally uses augmentation (see :func:`make_loader`).
    """

    train: Dataset
    calibration: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    name: str
    train_indices: torch.Tensor
    calibration_indices: torch.Tensor
    augment_by_default: bool = False


def load_data(config: DataConfig) -> DataSplits:
    """Load ``config.name`` and split it; see the module docstring for what the splits are."""
    source = DATASETS.create(
        config.name, root=config.root, download=config.download, image_size=config.image_size
    )
    if config.calibration_size > source.train_size:
        raise InputError(
            f"DataConfig.calibration_size={config.calibration_size} exceeds the "
            f"{source.train_size} training images of {config.name}"
        )
    permutation = torch.randperm(source.train_size, generator=torch.Generator().manual_seed(config.seed))
    # Sorted, so the held-out set is a set (its order carries no seed-dependent meaning) and
    # "the first N remaining images" means the first N in the dataset's own order.
    calibration_indices = permutation[: config.calibration_size].sort().values
    train_indices = permutation[config.calibration_size :].sort().values
    train_indices = train_indices[: _checked_subset(config, "train_subset", len(train_indices))]
    test_indices = torch.arange(_checked_subset(config, "test_subset", source.test_size))
    return DataSplits(
        train=source.select("train", train_indices),
        calibration=source.select("train", calibration_indices),
        test=source.select("test", test_indices),
        num_classes=source.num_classes,
        in_channels=source.in_channels,
        input_size=source.input_size,
        name=config.name,
        train_indices=train_indices,
        calibration_indices=calibration_indices,
        augment_by_default=source.augment_by_default,
    )


def recorded_data_fields(record: Mapping[str, Any] | None, input_shape: Sequence[int] | None) -> dict[str, Any]:
    """The :class:`DataConfig` fields a model was recorded with (a checkpoint's ``meta["data"]``
    and its ``(channels, height, width)`` input shape), as a dict to apply overrides to.

    An ``imagefolder`` record without an ``image_size`` takes it from a square input shape: the
    images a model was built for are the ones it is evaluated and pruned on.
    """
    fields = dict(record or {})
    if fields.get("name") == "imagefolder" and fields.get("image_size") is None and input_shape is not None:
        height, width = input_shape[-2:]
        if height == width:
            fields["image_size"] = int(height)
    return fields


def _checked_subset(config: DataConfig, field_name: str, available: int) -> int:
    requested = getattr(config, field_name)
    if requested is None:
        return available
    if requested > available:
        raise InputError(
            f"DataConfig.{field_name}={requested} exceeds the {available} images available in {config.name}"
        )
    return requested


def calibration_batches(splits: DataSplits, images: int, batch_size: int = 128, *,
                        progress: bool = False) -> list[Batch]:
    """The first ``images`` calibration images, in order, as a list of ``(inputs, targets)``
    batches of at most ``batch_size`` (the last one cut to size): what statistics, scoring,
    reconstruction and search all read, held in memory once. ``progress``: a bar on stderr
    while the images are read (decoding an ``imagefolder`` takes a while)."""
    from tqdm.auto import tqdm

    if images <= 0:
        raise InputError(f"calibration images must be > 0, got {images}")
    batches: list[Batch] = []
    seen = 0
    loader = make_loader(splits.calibration, min(batch_size, images), shuffle=False)
    with tqdm(total=min(images, len(splits.calibration)), desc="calibration images", unit="img",
              disable=not progress, leave=False) as bar:
        for x, y in loader:
            batches.append((x[: images - seen], y[: images - seen]))
            seen += len(batches[-1][1])
            bar.update(len(batches[-1][1]))
            if seen >= images:
                break
    return batches
