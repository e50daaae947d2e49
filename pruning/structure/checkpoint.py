"""Save and load (pruned) models without pickling modules.

A checkpoint is one ``torch.save`` file holding a ``state_dict`` and a small JSON spec: the
registered model name and its constructor arguments, the input shape, and the width of every
Conv2d / Linear / BatchNorm layer. Loading builds the registered model, resizes those layers
to the recorded widths and loads the weights with ``torch.load(weights_only=True)``, so a
checkpoint can never execute code. A model a user brings (not in the registry) is saved the
same way and reloaded by passing a freshly constructed instance of it as ``model``.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pruning.models import check_input_shape, create_model
from pruning.errors import InputError
from pruning.utils import atomic_write

FORMAT = "prunesweep-checkpoint/1"
_RESIZABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: registry name (None for a user's own module) and arguments."""

    name: str | None
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int, int]
    widths: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "name": self.name,
                "num_classes": self.num_classes,
                "in_channels": self.in_channels,
                "input_shape": list(self.input_shape),
                "widths": self.widths,
                "meta": self.meta,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {data.get('format')!r}; expected {FORMAT}")
        return cls(
            name=data["name"],
            num_classes=int(data["num_classes"]),
            in_channels=int(data["in_channels"]),
            input_shape=tuple(data["input_shape"]),
            widths=data["widths"],
            meta=data["meta"],
        )


def _width(m: nn.Module) -> dict[str, int]:
    if isinstance(m, nn.Conv2d):
        return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"in": m.in_features, "out": m.out_features}
    return {"out": m.num_features}


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """In/out widths of every Conv2d, Linear and BatchNorm layer (what pruning changes)."""
    return {name: _width(m) for name, m in model.named_modules() if isinstance(m, _RESIZABLE)}


def _resized(m: nn.Module, w: dict[str, int]) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        return nn.Conv2d(
            w["in"], w["out"], m.kernel_size, m.stride, m.padding, m.dilation, w["groups"],
            m.bias is not None, m.padding_mode,
        )
    if isinstance(m, nn.Linear):
        return nn.Linear(w["in"], w["out"], m.bias is not None)
    return type(m)(w["out"], m.eps, m.momentum, m.affine, m.track_running_stats)


def apply_widths(model: nn.Module, widths: dict[str, dict[str, int]]) -> nn.Module:
    """Replace layers in place by ones of the recorded widths (weights are loaded afterwards)."""
    modules = dict(model.named_modules())
    unknown = [n for n in widths if n not in modules or not isinstance(modules[n], _RESIZABLE)]
    if unknown:
        raise CheckpointError(f"checkpoint layers not found in the model: {', '.join(unknown[:5])}")
    for name, w in widths.items():
        if _width(modules[name]) == w:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _resized(modules[name], w))
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec) -> None:
    """Write ``model``'s weights and ``spec`` (widths refreshed from the model), atomically."""
    spec = ModelSpec(spec.name, spec.num_classes, spec.in_channels, spec.input_shape, layer_widths(model), spec.meta)
    payload = {"spec": spec.to_json(), "state_dict": model.state_dict()}

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)

    atomic_write(path, write)


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and state_dict of a checkpoint, or a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{str(path)!r} is not a prunesweep checkpoint (not a torch.save file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or not {"spec", "state_dict"} <= payload.keys():
            raise CheckpointError(f"{str(path)!r} is not a prunesweep checkpoint (no spec and state_dict)")
        return ModelSpec.from_json(payload["spec"]), payload["state_dict"]
    except CheckpointError:
        raise
    except Exception as err:  # unpickling, zip and JSON errors all mean the same to a user
        # torch's own message advises weights_only=False, which would execute the file's code
        reason = "it holds objects other than tensors and plain data" if "weights_only" in str(err) else (
            str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise CheckpointError(f"{str(path)!r} is not a prunesweep checkpoint ({reason})") from None


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the saved model (pruned widths included) in eval mode.

    ``model``: for a checkpoint of a user's own module, a fresh instance of that module.
    For a registered model it may be omitted; if given, it must be the same architecture.
    """
    spec, state = read_checkpoint(path)
    if model is None and spec.name is None:
        raise CheckpointError(f"{str(path)!r} holds a custom model: pass an instance of it as `model`")
    try:
        model = rebuild_model(spec, state, model)
    except RuntimeError as err:
        what = f"model {spec.name!r}" if spec.name else "a different model"
        detail = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"checkpoint {str(path)!r} is for {what} and does not fit: {detail}") from None
    return model, spec


def rebuild_model(spec: ModelSpec, state: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> nn.Module:
    """The model of ``spec`` (a fresh registered one, or ``model``) resized to the recorded
    widths, with ``state`` loaded strictly, in eval mode; ``load_state_dict``'s RuntimeError
    when the weights do not fit."""
    if model is None:
        model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels)
    apply_widths(model, spec.widths)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_fits(model: nn.Module, spec: ModelSpec, splits: Any) -> tuple[int, int, int]:
    """The ``(channels, height, width)`` input shape of ``splits`` (a
    :class:`~pruning.data.DataSplits`), after checking that ``model`` (rebuilt from ``spec``)
    has as many classes as the dataset and accepts its images; raises
    :class:`CheckpointError` / :class:`~pruning.models.InputShapeError` otherwise."""
    shape = (splits.in_channels, *splits.input_size)
    if splits.num_classes != spec.num_classes:
        raise CheckpointError(
            f"the checkpoint has {spec.num_classes} classes but dataset {splits.name!r} has {splits.num_classes}"
        )
    check_input_shape(model, shape, spec.name or "model")
    return shape
