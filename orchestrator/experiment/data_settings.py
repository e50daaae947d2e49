"""The ``data:`` section of a sweep or study config: which calibration images score and
recover, where the dataset lives, which test images report, and (``imagefolder``) the image
size; :meth:`DataSettings.data_config` makes a baseline's :class:`pruning.data.DataConfig`."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from orchestrator.experiment.checks import ConfigError, check_int, check_keys, check_mapping, check_string, make_absolute

__all__ = ["DataSettings", "MOVED_DATA_KEYS"]

#: data keys that became recipe keys: refused with their new place
MOVED_DATA_KEYS = {"bn_batches": "recipe.bn_batches", "finetune_subset": "recipe.finetune_subset"}


@dataclass(frozen=True)
class DataSettings:
    """Data for scoring and evaluation (the dataset itself is the checkpoint's; what recovery
    reads is the ``recipe``'s).

    calibration_images: images of the calibration split used for statistics, data-driven
        criteria and reconstruction (the whole calibration split scores every trial's accuracy).
    batch_size: of the calibration batches.
    data_root: dataset folder (None: the checkpoint's / the dataset's default).
    test_subset: test images for the Pareto set's test accuracy (None: the checkpoint's).
    image_size: ``imagefolder`` only: images resized and centre-cropped to this many pixels a
        side (None: the size the checkpoint records, else 224).
    """

    calibration_images: int = 512
    batch_size: int = 128
    data_root: str | None = None
    test_subset: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        check_int("data.calibration_images", self.calibration_images, lo=1)
        check_int("data.batch_size", self.batch_size, lo=1)
        check_string("data.data_root", self.data_root, optional=True)
        check_int("data.test_subset", self.test_subset, lo=1, optional=True)
        check_int("data.image_size", self.image_size, lo=1, optional=True)

    def check_dataset(self, dataset: str | None) -> None:
        """Refuse ``image_size`` for a dataset other than ``imagefolder`` (the baseline's)."""
        if self.image_size is not None and dataset != "imagefolder":
            raise ConfigError("data.image_size", f"applies only to dataset imagefolder, not {dataset!r}; "
                                                 "drop it or use an imagefolder baseline")

    def data_config(self, recorded: Mapping[str, Any]) -> Any:
        """The :class:`pruning.data.DataConfig` of a baseline: the ``recorded`` fields (a
        checkpoint's, see :func:`pruning.data.recorded_data_fields`, or just the dataset's
        ``name``) with this section's ``data_root``, ``test_subset`` and ``image_size``."""
        from pruning.data import DataConfig

        fields = dict(recorded)
        self.check_dataset(fields.get("name", DataConfig.name))
        overrides = {"root": self.data_root, "test_subset": self.test_subset, "image_size": self.image_size}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return DataConfig(**fields)

    @classmethod
    def from_dict(cls, data: Any) -> DataSettings:
        data = check_mapping("data", data)
        check_keys("data.", data, [f.name for f in fields(cls)], MOVED_DATA_KEYS)
        values = dict(data)
        if values.get("data_root") is not None:
            values["data_root"] = make_absolute(check_string("data.data_root", values["data_root"]))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every key, but ``image_size`` only where set: a resolved config without it, and so
        its MLflow params, stay those of a sweep that never sized its images."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image_size" or self.image_size}
