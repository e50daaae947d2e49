"""Where the images come from: one registered factory per dataset, each returning a source
that selects images by index from its training or test split.

The small datasets (Fashion-MNIST, MNIST, CIFAR-10, SVHN) are decoded once into uint8 tensors
and converted to normalised floats only for the images selected. ``imagefolder`` datasets are
too big for that and are read lazily through :class:`torchvision.datasets.ImageFolder`.

Fashion-MNIST is the default and ships with Debian (``apt-get install dataset-fashion-mnist``)
as gzipped IDX files in :data:`FASHION_MNIST_ROOT`. torchvision only reads the un-gzipped files
from ``<root>/FashionMNIST/raw``, so the IDX sources build that layout once in a cache
directory (``$PRUNESWEEP_CACHE``, default ``~/.cache/prunesweep``) and never download.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision import transforms

from pruning.data.loaders import Augmentation, ImageFolderSubset, ImageTensorDataset
from pruning.errors import InputError
from pruning.registry import Registry
from pruning.utils import atomic_write

__all__ = [
    "FASHION_MNIST_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataRootError",
    "DATASETS",
    "list_datasets",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataRootError(InputError, FileNotFoundError):
    """The dataset's root is missing or incomplete; the message says how to get the data."""


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


# --- dataset factories -------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("PRUNESWEEP_CACHE", Path.home() / ".cache" / "prunesweep"))


# Cache files are written through atomic_write: an interrupted run leaves either the old state or
# the complete file, never a truncated one that would later look valid, and concurrent runs
# (sweep workers) never share a temporary file.


def _gunzip(source: Path) -> Callable[[Path], None]:
    def write(temp: Path) -> None:
        with gzip.open(source, "rb") as compressed, open(temp, "wb") as out:
            shutil.copyfileobj(compressed, out, length=1 << 20)

    return write


def _symlink(source: Path) -> Callable[[Path], None]:
    def write(temp: Path) -> None:
        temp.unlink()  # atomic_write created it as a file; its unique name becomes the link
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
        atomic_write(destination, _gunzip(source) if source.suffix == ".gz" else _symlink(source))
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
    normalization: tuple[float, float],
    augmentation: Augmentation,
) -> _TensorSource:
    """The train and test splits of a torchvision IDX dataset (MNIST-like) under ``root``,
    normalised with ``normalization`` (the pixels' mean and standard deviation)."""
    mean, std = normalization
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
    return _idx_source(torchvision.datasets.FashionMNIST, root_path, download, message, (0.2860, 0.3530),
                       Augmentation(padding=2, flip=True))


@DATASETS.register("mnist")
def _mnist(root: str | None, download: bool, image_size: int | None) -> _TensorSource:
    root_path = _required_root("mnist", root)
    # No flips: mirrored digits are different symbols.
    return _idx_source(torchvision.datasets.MNIST, root_path, download, _missing_root_message("mnist", root),
                       (0.1307, 0.3081), Augmentation(padding=2, flip=False))


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
        raise InputError(f"imagefolder: {test_dir} has other classes than {root_path / 'train'}")
    return _FolderSource(train=train, test=test, image_size=size,
                         augmentation=Augmentation(padding=size // 8, flip=True))
