"""Datasets with a seeded calibration split, and fast in-memory data loaders.

Every pruning run needs three disjoint pools of images:

* ``train``: for (re)training and fine-tuning,
* ``calibration``: ``calibration_size`` images held out of the *training* split, chosen by
  ``seed`` and never trained on; criteria use it for activation statistics and the search
  uses it to score candidates, so the test split stays untouched until the final report,
* ``test``: the dataset's official test (or validation) split.

The small datasets (Fashion-MNIST, MNIST, CIFAR-10, SVHN) are decoded once into normalised
float tensors and served as :class:`ImageTensorDataset`; :func:`make_loader` then slices whole
batches out of those tensors and augments them as batches, which is far faster on a CPU than
per-sample PIL transforms. ``imagefolder`` datasets are too big for that and are read lazily
through :class:`torchvision.datasets.ImageFolder`.

Fashion-MNIST is the default and ships with Debian (``apt-get install dataset-fashion-mnist``)
as gzipped IDX files in :data:`FASHION_MNIST_ROOT`. torchvision only reads the un-gzipped files
from ``<root>/FashionMNIST/raw``, so :func:`load_data` builds that layout once in a cache
directory (``$PRUNESWEEP_CACHE``, default ``~/.cache/prunesweep``) and never downloads.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torchvision
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
)
from torchvision import transforms

from pruning.registry import Registry
from pruning.errors import InputError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

Batch = tuple[torch.Tensor, torch.Tensor]


class DataRootError(InputError, FileNotFoundError):
    """The dataset's root is missing or incomplete; the message says how to get the data."""


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation applied to whole batches: a random crop of the image padded by
    ``padding`` pixels on each side (zero padding, i.e. the dataset mean after normalisation),
    then a horizontal flip with probability 1/2 when ``flip``."""

    padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"Augmentation.padding must be >= 0, got {self.padding}")

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


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split it.

    ``root=None`` means the dataset's default root (only ``fashion-mnist`` has one).
    ``train_subset`` / ``test_subset`` keep only the first N images of the (remaining)
    training / test split, for quick runs. ``image_size`` applies to ``imagefolder`` only
    (default 224).
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
                raise ValueError(f"DataConfig.{field_name} must be >= 0, got {value}")
        if self.image_size is not None:
            if self.name != "imagefolder":
                raise ValueError(
                    f"DataConfig.image_size applies only to imagefolder, not {self.name!r}"
                )
            if self.image_size <= 0:
                raise ValueError(f"DataConfig.image_size must be > 0, got {self.image_size}")


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


class _Source(Protocol):
    """A loaded dataset before splitting: selects images by index from either split."""

    @property
    def train_size(self) -> int: ...

    @property
    def test_size(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def in_channels(self) -> int: ...

    @property
    def input_size(self) -> tuple[int, int]: ...

    @property
    def augment_by_default(self) -> bool: ...

    def select(self, split: str, indices: torch.Tensor) -> Dataset: ...


@dataclass(frozen=True)
class _TensorSource:
    """uint8 ``N x C x H x W`` images, converted to float only for the images selected."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    augmentation: Augmentation
    augment_by_default: bool

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    @property
    def test_size(self) -> int:
        return len(self.test_labels)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    def select(self, split: str, indices: torch.Tensor) -> Dataset:
        images, labels = (
            (self.train_images, self.train_labels) if split == "train" else (self.test_images, self.test_labels)
        )
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        selected = images[indices].float().div_(255).sub_(mean).div_(std)
        return ImageTensorDataset(selected, labels[indices].long(), self.augmentation)


@dataclass(frozen=True)
class _FolderSource:
    """Lazily decoded ``ImageFolder`` splits, all resized and centre-cropped to ``image_size``."""

    train: torchvision.datasets.ImageFolder
    test: torchvision.datasets.ImageFolder
    image_size: int
    augmentation: Augmentation
    in_channels: int = 3
    augment_by_default: bool = True

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def select(self, split: str, indices: torch.Tensor) -> Dataset:
        dataset = self.train if split == "train" else self.test
        return ImageFolderSubset(dataset, indices.tolist(), self.augmentation)


DATASETS: Registry[_Source] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_data(config: DataConfig) -> DataSplits:
    """Load ``config.name`` and split it; see the module docstring for what the splits are."""
    source = DATASETS.create(
        config.name, root=config.root, download=config.download, image_size=config.image_size
    )
    if config.calibration_size > source.train_size:
        raise ValueError(
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


def _checked_subset(config: DataConfig, field_name: str, available: int) -> int:
    requested = getattr(config, field_name)
    if requested is None:
        return available
    if requested > available:
        raise ValueError(
            f"DataConfig.{field_name}={requested} exceeds the {available} images available in {config.name}"
        )
    return requested


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    augment: bool | Augmentation = False,
) -> DataLoader:
    """A single-process loader whose shuffling and augmentation depend only on ``seed``.

    ``augment=True`` applies the dataset's own :class:`Augmentation` (datasets from
    :func:`load_data` carry one); pass an :class:`Augmentation` to choose another. Each pass
    over the loader draws fresh shuffles and crops, and two loaders built with the same seed
    yield identical batch streams. For in-memory datasets whole batches are sliced out of the
    tensors at once instead of collating one sample at a time.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
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
            num_workers=0,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_BatchTransform(augmentation, augment_generator, collate=True),
        num_workers=0,
    )


def _resolve_augmentation(dataset: Dataset, augment: bool | Augmentation) -> Augmentation | None:
    if isinstance(augment, Augmentation):
        return augment
    if not augment:
        return None
    augmentation = getattr(dataset, "augmentation", None)
    if not isinstance(augmentation, Augmentation):
        raise ValueError(
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
            images = self.augmentation(images, self.generator)
        return images, labels


# --- dataset factories -------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("PRUNESWEEP_CACHE", Path.home() / ".cache" / "prunesweep"))


def _atomic_write(destination: Path, write: Callable[[Path], None]) -> None:
    """``write(temp_path)`` then rename over ``destination``: an interrupted run leaves either
    the old state or the complete file, never a truncated one that would later look valid.
    The temporary name is unique per process, so concurrent runs (sweep workers) never clash."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = destination.with_name(f".{destination.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temp)
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def _gunzip(source: Path) -> Callable[[Path], None]:
    def write(temp: Path) -> None:
        with gzip.open(source, "rb") as compressed, open(temp, "xb") as out:
            shutil.copyfileobj(compressed, out, length=1 << 20)

    return write


def _symlink(source: Path) -> Callable[[Path], None]:
    def write(temp: Path) -> None:
        temp.symlink_to(source.resolve())

    return write


def _idx_torchvision_root(folder_name: str, root: Path) -> Path | None:
    """A root that torchvision's ``MNIST``-style class ``folder_name`` can read, or None.

    Accepts torchvision's own layout (``root/<folder_name>/raw/<idx files>``) as is, and a flat
    folder of IDX files (gzipped or not, as Debian installs them) by mirroring it into the cache:
    un-gzipped copies or symlinks, refreshed when the source is newer.
    """
    if all((root / folder_name / "raw" / name).is_file() for name in _IDX_FILES):
        return root
    sources = []
    for name in _IDX_FILES:
        if (root / name).is_file():
            sources.append(root / name)
        elif (root / f"{name}.gz").is_file():
            sources.append(root / f"{name}.gz")
        else:
            return None
    # One cache folder per source root, so two roots never overwrite each other's files.
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    cache_root = _cache_dir() / "torchvision" / f"{folder_name}-{key}"
    for name, source in zip(_IDX_FILES, sources):
        destination = cache_root / folder_name / "raw" / name
        if destination.is_file() and destination.stat().st_mtime >= source.stat().st_mtime:
            continue
        _atomic_write(destination, _gunzip(source) if source.suffix == ".gz" else _symlink(source))
    return cache_root


def _missing_root_message(name: str, root: str | None) -> str:
    where = f"in {root}" if root is not None else "(no --data-root given)"
    return f"{name} data not found {where}: pass --data-root DIR, with --download to fetch it"


def _required_root(name: str, root: str | None) -> Path:
    if root is None:
        raise DataRootError(_missing_root_message(name, root))
    return Path(root).expanduser()


def _idx_source(
    dataset_class: type[torchvision.datasets.MNIST],
    root: Path,
    download: bool,
    missing_message: str,
    mean: float,
    std: float,
    augmentation: Augmentation,
) -> _TensorSource:
    torchvision_root = _idx_torchvision_root(dataset_class.__name__, root)
    if torchvision_root is None:
        if not download:
            raise DataRootError(missing_message)
        torchvision_root = root
    try:
        train = dataset_class(str(torchvision_root), train=True, download=download)
        test = dataset_class(str(torchvision_root), train=False, download=download)
    except RuntimeError as error:  # torchvision's "not found" and failed downloads
        raise DataRootError(_root_error_message(missing_message, error, download)) from error
    return _TensorSource(
        train_images=train.data.unsqueeze(1),
        train_labels=train.targets,
        test_images=test.data.unsqueeze(1),
        test_labels=test.targets,
        mean=(mean,),
        std=(std,),
        num_classes=len(train.classes),
        augmentation=augmentation,
        augment_by_default=False,
    )


def _root_error_message(message: str, error: Exception, download: bool) -> str:
    """``message``, plus torchvision's own words when a download failed (its "not found" text
    would only suggest ``download=True``, an API detail a CLI user cannot act on)."""
    return f"{message} (download failed: {_one_line(error)})" if download else message


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


@DATASETS.register("fashion-mnist")
def _fashion_mnist(root: str | None, download: bool, image_size: int | None) -> _TensorSource:
    root_path = Path(root or FASHION_MNIST_ROOT).expanduser()
    message = (
        f"Fashion-MNIST not found in {root_path}: run `apt-get install dataset-fashion-mnist` "
        f"or pass --data-root DIR (with --download to fetch it)"
    )
    return _idx_source(torchvision.datasets.FashionMNIST, root_path, download, message, 0.2860, 0.3530,
                       Augmentation(padding=2, flip=True))


@DATASETS.register("mnist")
def _mnist(root: str | None, download: bool, image_size: int | None) -> _TensorSource:
    root_path = _required_root("mnist", root)
    # No flips: mirrored digits are different symbols.
    return _idx_source(torchvision.datasets.MNIST, root_path, download, _missing_root_message("mnist", root),
                       0.1307, 0.3081, Augmentation(padding=2, flip=False))


def _torchvision_dataset(
    name: str, root: str | None, download: bool, dataset_class: Callable[..., Dataset], **kwargs
) -> Dataset:
    try:
        return dataset_class(str(_required_root(name, root)), download=download, **kwargs)
    except RuntimeError as error:  # "Dataset not found or corrupted" and failed downloads
        raise DataRootError(_root_error_message(_missing_root_message(name, root), error, download)) from error


@DATASETS.register("cifar10")
def _cifar10(root: str | None, download: bool, image_size: int | None) -> _TensorSource:
    train, test = (
        _torchvision_dataset("cifar10", root, download, torchvision.datasets.CIFAR10, train=is_train)
        for is_train in (True, False)
    )
    return _TensorSource(
        # stored as N x H x W x C numpy arrays
        train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_labels=torch.tensor(train.targets),
        test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_labels=torch.tensor(test.targets),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        num_classes=10,
        augmentation=Augmentation(padding=4, flip=True),
        augment_by_default=True,
    )


@DATASETS.register("svhn")
def _svhn(root: str | None, download: bool, image_size: int | None) -> _TensorSource:
    train, test = (
        _torchvision_dataset("svhn", root, download, torchvision.datasets.SVHN, split=split)
        for split in ("train", "test")
    )
    return _TensorSource(
        # stored as N x C x H x W numpy arrays; torchvision already maps label 10 to digit 0
        train_images=torch.from_numpy(train.data),
        train_labels=torch.from_numpy(train.labels),
        test_images=torch.from_numpy(test.data),
        test_labels=torch.from_numpy(test.labels),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        num_classes=10,
        # No flips: mirrored digits are different symbols.
        augmentation=Augmentation(padding=4, flip=False),
        augment_by_default=True,
    )


@DATASETS.register("imagefolder")
def _imagefolder(root: str | None, download: bool, image_size: int | None) -> _FolderSource:
    size = image_size or 224
    where = Path(root).expanduser() if root is not None else Path("DIR")
    message = f"imagefolder needs class folders in {where}/train and {where}/val (or /test): pass --data-root DIR"
    if root is None:
        raise DataRootError(message)
    root_path = where
    if download:
        raise DataRootError(f"imagefolder cannot be downloaded; {message}")
    test_dir = next((root_path / d for d in ("val", "test") if (root_path / d).is_dir()), None)
    if not (root_path / "train").is_dir() or test_dir is None:
        raise DataRootError(message)
    # The usual ImageNet evaluation crop (resize to size/0.875, centre crop); random crops and
    # flips for training are applied later to whole batches by make_loader.
    transform = transforms.Compose([
        transforms.Resize(round(size / 0.875)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    try:
        train = torchvision.datasets.ImageFolder(str(root_path / "train"), transform=transform)
        test = torchvision.datasets.ImageFolder(str(test_dir), transform=transform)
    except FileNotFoundError as error:  # a split folder without any image
        raise DataRootError(f"{message} ({_one_line(error)})") from error
    if test.classes != train.classes:
        raise ValueError(f"imagefolder: {test_dir} has other classes than {root_path / 'train'}")
    return _FolderSource(train=train, test=test, image_size=size,
                         augmentation=Augmentation(padding=size // 8, flip=True))


def calibration_batches(splits: DataSplits, images: int, batch_size: int = 128) -> list[Batch]:
    """The first ``images`` calibration images, in order, as a list of ``(inputs, targets)``
    batches of at most ``batch_size`` (the last one cut to size): what statistics, scoring,
    reconstruction and search all read, held in memory once."""
    if images <= 0:
        raise ValueError(f"calibration images must be > 0, got {images}")
    batches: list[Batch] = []
    seen = 0
    for x, y in make_loader(splits.calibration, min(batch_size, images), shuffle=False):
        batches.append((x[: images - seen], y[: images - seen]))
        seen += len(batches[-1][1])
        if seen >= images:
            break
    return batches
