"""Datasets, the seeded calibration split and data loaders."""
from pruning.data.loaders import (  # noqa: F401
    Batch,
    Augmentation,
    ImageTensorDataset,
    ImageFolderSubset,
    make_eval_loader,
    make_loader,
)
from pruning.data.sources import (  # noqa: F401
    FASHION_MNIST_ROOT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataRootError,
    DATASETS,
    list_datasets,
)
from pruning.data.config import (  # noqa: F401
    DataConfig,
    DataSplits,
    load_data,
    calibration_batches,
    recorded_data_fields,
)

__all__ = [
    "FASHION_MNIST_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "DataRootError",
    "Augmentation",
    "ImageTensorDataset",
    "ImageFolderSubset",
    "DataConfig",
    "DataSplits",
    "DATASETS",
    "list_datasets",
    "load_data",
    "make_eval_loader",
    "make_loader",
    "calibration_batches",
    "recorded_data_fields",
]
