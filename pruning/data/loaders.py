"""Seeded in-memory data loaders with whole-batch augmentation.

The small datasets are served as :class:`ImageTensorDataset` s of normalised float tensors;
:func:`make_loader` slices whole batches out of those tensors and augments them as batches,
which is far faster on a CPU than per-sample PIL transforms. ``imagefolder`` datasets come as
:class:`ImageFolderSubset` s, collated one sample at a time and augmented the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    get_worker_info,
)

from pruning.errors import InputError

__all__ = ["Batch", "Augmentation", "ImageTensorDataset", "ImageFolderSubset", "make_eval_loader", "make_loader"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation applied to whole batches: a random crop of the image padded by
    ``padding`` pixels on each side (zero padding, i.e. the dataset mean after normalisation),
    then a horizontal flip with probability 1/2 when ``flip``."""

    padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise InputError(f"Augmentation.padding must be >= 0, got {self.padding}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        if self.padding:
            padded = torch.nn.functional.pad(images, [self.padding] * 4)
            top = torch.randint(0, 2 * self.padding + 1, (batch,), generator=generator)
            left = torch.randint(0, 2 * self.padding + 1, (batch,), generator=generator)
            rows = (top[:, None] + torch.arange(height))[:, :, None]
            cols = (left[:, None] + torch.arange(width))[:, None, :]
            # One gather for the whole batch; advanced indices around the channel slice put
            # the channel dimension last, hence the permute.
            images = padded[torch.arange(batch)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flipped = torch.rand(batch, generator=generator) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        return images.contiguous()


class ImageTensorDataset(TensorDataset):
    """``(images, labels)`` tensors plus the augmentation that suits the dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augmentation: Augmentation) -> None:
        super().__init__(images, labels)
        self.augmentation = augmentation


class ImageFolderSubset(Subset):
    """A slice of an ``ImageFolder`` plus the augmentation that suits it."""

    def __init__(self, dataset: Dataset, indices: list[int], augmentation: Augmentation) -> None:
        super().__init__(dataset, indices)
        self.augmentation = augmentation


# long signature: pruning/recovery/stages.py passes shuffle, seed, augment
# and pin_memory by name; num_workers and pin_memory become one value together with that caller
def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    augment: bool | Augmentation = False,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose shuffling and augmentation depend only on ``seed``.

    ``augment=True`` applies the dataset's own :class:`Augmentation` (datasets from
    :func:`load_data` carry one); pass an :class:`Augmentation` to choose another. Each pass
    over the loader draws fresh shuffles and crops, and two loaders built with the same seed
    yield identical batch streams. For in-memory datasets whole batches are sliced out of the
    tensors at once instead of collating one sample at a time.

    ``num_workers`` (default 0: batches are made in this process, as always) makes batches in
    that many worker processes. The shuffling order is the same for any ``num_workers`` (the
    sampler runs in this process), so is every batch of a loader without augmentation; with
    augmentation, each worker draws its crops and flips from its own generator, seeded from
    ``seed`` and the pass, so the batches repeat for the same ``seed`` and ``num_workers`` but
    differ from the single-process ones. ``pin_memory`` pins batches in page-locked memory for
    faster copies to a CUDA device (only where CUDA is available; ignored elsewhere).
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be > 0, got {batch_size}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    parallel = {"num_workers": num_workers, "pin_memory": bool(pin_memory) and torch.cuda.is_available()}
    if num_workers:
        # the worker seeds come from a generator of the loader's own (not the global one, which
        # a single-process loader leaves as it is); _BatchTransform reseeds from them
        parallel["generator"] = torch.Generator().manual_seed(seed + 2)
    augmentation = _resolve_augmentation(dataset, augment)
    # Separate streams, so switching augmentation on does not change the shuffling order.
    shuffle_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1)
    sampler = RandomSampler(dataset, generator=shuffle_generator) if shuffle else SequentialSampler(dataset)
    if isinstance(dataset, TensorDataset):
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=BatchSampler(sampler, batch_size, drop_last=False),
            collate_fn=_BatchTransform(augmentation, augment_generator, collate=False),
            **parallel,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_BatchTransform(augmentation, augment_generator, collate=True),
        **parallel,
    )


def make_eval_loader(dataset: Dataset, device: torch.device | str, *, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """The dataset in order, in batches of :func:`pruning.devices.eval_batch_size` for
    ``device`` and the size of its first image: what every evaluation (accuracy only) reads."""
    from pruning.devices import eval_batch_size

    shape = tuple(dataset[0][0].shape) if len(dataset) else None
    return make_loader(dataset, eval_batch_size(device, shape), shuffle=False, num_workers=num_workers,
                       pin_memory=pin_memory)


def _resolve_augmentation(dataset: Dataset, augment: bool | Augmentation) -> Augmentation | None:
    if isinstance(augment, Augmentation):
        return augment
    if not augment:
        return None
    augmentation = getattr(dataset, "augmentation", None)
    if not isinstance(augmentation, Augmentation):
        raise InputError(
            "augment=True needs a dataset from load_data() (it knows its augmentation); "
            "pass an Augmentation(...) instead"
        )
    return augmentation


class _BatchTransform:
    """Collates (if needed) and augments one batch with the loader's own generator."""

    def __init__(self, augmentation: Augmentation | None, generator: torch.Generator, collate: bool) -> None:
        self.augmentation = augmentation
        self.generator = generator
        self.collate = collate

    def __call__(self, batch) -> Batch:
        images, labels = default_collate(batch) if self.collate else batch
        if self.augmentation is not None:
            images = self.augmentation(images, self._worker_generator())
        return images, labels

    def _worker_generator(self) -> torch.Generator:
        """This process's generator: in a loader worker (a copy of this transform per worker and
        pass) reseeded once from the worker's seed, so workers do not repeat each other's draws."""
        info = get_worker_info()
        if info is not None and getattr(self, "_worker_seed", None) != info.seed:
            self.generator = torch.Generator().manual_seed(info.seed)
            self._worker_seed = info.seed
        return self.generator
