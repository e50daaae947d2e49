"""The baseline of a sweep or comparison given as a model instead of a checkpoint: the top-level
``model:``, ``weights:``, ``model_kwargs:`` and ``dataset:`` keys of a config.

A config names exactly one of ``checkpoint:`` (a prunesweep checkpoint, which records its model,
weights and data) and ``model:`` (a registered model, ``torchvision:<name>``, ``timm:<name>`` or
``package.module:factory``, see :mod:`pruning.models.external`) with its ``weights:`` (a
state_dict file; none: random initialisation), ``model_kwargs:`` and ``dataset:`` (default
fashion-mnist). The name and options are checked when the config is read (an import path is
imported then); the weights file when the baseline is prepared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from orchestrator.experiment.checks import (
    ConfigError, check_choice, check_mapping, check_string, make_absolute, to_plain,
)
from pruning.errors import first_line

__all__ = ["MODEL_KEYS", "ModelSettings", "check_one_source", "check_source_exists", "model_source"]

#: the top-level keys of a model given instead of a checkpoint
MODEL_KEYS = ("model", "weights", "model_kwargs", "dataset")


@dataclass(frozen=True)
class ModelSettings:
    """The baseline as a model instead of a checkpoint (the ``model:`` keys of a config).

    name: a registered model, ``torchvision:<name>``, ``timm:<name>`` or ``package.module:factory``.
    weights: its state_dict file (None: random initialisation); kwargs: the factory's options;
    dataset: the dataset its weights were trained on (a checkpoint records its own).
    """

    name: str
    weights: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"

    def __post_init__(self) -> None:
        from pruning.data import list_datasets
        from pruning.models import check_model_name

        check_string("model", self.name)
        check_string("weights", self.weights, optional=True)
        object.__setattr__(self, "kwargs", dict(check_mapping("model_kwargs", self.kwargs)))
        check_choice("dataset", self.dataset, list_datasets())
        try:
            check_model_name(self.name, self.kwargs)
        except ValueError as err:
            message = first_line(err)
            raise ConfigError("model_kwargs" if "option" in message else "model", message) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSettings:
        """From a config's top-level ``model``, ``weights``, ``model_kwargs`` and ``dataset`` keys."""
        weights = data.get("weights")
        if weights is not None:
            weights = make_absolute(check_string("weights", weights))
        return cls(name=check_string("model", data.get("model")), weights=weights,
                   kwargs=check_mapping("model_kwargs", data.get("model_kwargs")),
                   dataset=data.get("dataset", "fashion-mnist"))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "weights": self.weights, "model_kwargs": to_plain(dict(self.kwargs)),
                "dataset": self.dataset}


def model_source(data: Mapping[str, Any]) -> tuple[str | None, ModelSettings | None]:
    """``(checkpoint, model)`` of a config's top level: exactly one of ``checkpoint:`` and
    ``model:`` (with ``weights:``, ``model_kwargs:``, ``dataset:``)."""
    if "checkpoint" in data and "model" in data:
        raise ConfigError("model", "give checkpoint or model (with weights), not both")
    if "checkpoint" in data:
        extra = [k for k in MODEL_KEYS if k in data]
        if extra:
            raise ConfigError(extra[0], "goes with model: (a checkpoint records its model, weights and dataset)")
        return make_absolute(check_string("checkpoint", data["checkpoint"])), None
    if "model" not in data:
        extra = [k for k in MODEL_KEYS if k in data]
        if extra:
            raise ConfigError(extra[0], "goes with model: name the model too")
        raise ConfigError("checkpoint", "missing: the path of the unpruned baseline checkpoint "
                                        "(or model: with weights:)")
    return None, ModelSettings.from_dict(data)


def check_one_source(checkpoint: str | None, model: ModelSettings | None) -> None:
    """Exactly one of a checkpoint path and a :class:`ModelSettings`."""
    if (checkpoint is None) == (model is None):
        raise ConfigError("checkpoint", "give exactly one of checkpoint and model")
    if checkpoint is not None:
        check_string("checkpoint", checkpoint)
    elif not isinstance(model, ModelSettings):
        raise ConfigError("model", f"must be a ModelSettings, got {type(model).__name__}")


def check_source_exists(source: str | ModelSettings) -> None:
    """Refuse a baseline whose checkpoint or weights file is missing, before Ray or MLflow start."""
    from pathlib import Path

    key, path = ("checkpoint", source) if isinstance(source, str) else ("weights", source.weights)
    if path is not None and not Path(path).is_file():
        raise ConfigError(key, f"file {path!r} does not exist")
