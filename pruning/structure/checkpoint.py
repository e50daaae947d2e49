"""Save and load (pruned) models without pickling modules.

A checkpoint is one ``torch.save`` file holding a ``state_dict`` and a small JSON spec: the
model name and its constructor arguments, the input shape, and the width of every
Conv2d / Linear / BatchNorm layer. Loading builds the model by name, resizes those layers
to the recorded widths and loads the weights with ``torch.load(weights_only=True)``, so the
file itself never unpickles code. The name is a registered one, ``torchvision:<name>``,
``timm:<name>`` or an import path ``package.module:factory``; the last is imported and called
on loading (like running that module), so load such checkpoints from trusted sources only
(:mod:`pruning.models.external` refuses standard-library callables). A model built some other
way (``name`` None) is saved the same way and reloaded by passing a freshly constructed
instance of it as ``model``. :func:`model_for_data` builds a named model, with a user's
weights, for a dataset and checks up front that it fits and can be pruned.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pruning.models import check_input_shape, check_model_name, create_model, load_weights
from pruning.errors import InputError
from pruning.utils import TensorFileError, atomic_write, load_tensor_file

FORMAT = "prunesweep-checkpoint/1"
_RESIZABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: its name (registered, ``torchvision:``/``timm:`` or an import
    path; None for a module built some other way), the dataset's classes and channels, the
    model's own keyword options ``kwargs`` and the recorded layer widths."""

    name: str | None
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int, int]
    widths: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise CheckpointError(f"ModelSpec.name must be a non-empty string or None, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise CheckpointError(f"ModelSpec.kwargs must map option names to values, got {self.kwargs!r}")
        if self.kwargs and self.name is None:
            raise CheckpointError("ModelSpec.kwargs need a model name to be passed to")
        object.__setattr__(self, "kwargs", dict(self.kwargs))

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
                "kwargs": self.kwargs,
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
            kwargs=data.get("kwargs", {}),
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
    spec = replace(spec, widths=layer_widths(model))
    payload = {"spec": spec.to_json(), "state_dict": model.state_dict()}

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)

    atomic_write(path, write)


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and state_dict of a checkpoint, or a one-line CheckpointError."""
    shown = str(path)
    try:
        payload = load_tensor_file(path)
    except TensorFileError as err:
        if err.kind == "missing":
            raise CheckpointError(f"checkpoint {shown!r} does not exist") from None
        reason = {"not_torch": "not a torch.save file",
                  "pickled": "it holds objects other than tensors and plain data"}.get(err.kind, err.detail)
        raise CheckpointError(f"{shown!r} is not a prunesweep checkpoint ({reason})") from None
    if not isinstance(payload, dict) or not {"spec", "state_dict"} <= payload.keys():
        raise CheckpointError(f"{shown!r} is not a prunesweep checkpoint (no spec and state_dict)")
    try:
        return ModelSpec.from_json(payload["spec"]), payload["state_dict"]
    except Exception as err:  # a spec that is not ours means the same to a user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{shown!r} is not a prunesweep checkpoint ({reason})") from None


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
        model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels, **spec.kwargs)
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


def model_for_data(
    name: str,
    splits: Any,
    *,
    weights: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    kwargs: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    prunable: bool = True,
    weights_name: str | os.PathLike | None = None,
) -> tuple[nn.Module, ModelSpec, tuple[int, int, int]]:
    """``(model, spec, input shape)``: model ``name`` built for ``splits``'s classes and
    channels with ``kwargs``, ``weights`` (a state_dict or its file) loaded, in eval mode.

    Checked up front, each failure one line: the name and options, that the weights fit, that the
    model runs on the dataset's images and outputs its classes, and (``prunable``) that the
    pruning engine can trace and prune it (the layer it cannot handle is named). ``weights_name``:
    the file a ``weights`` state_dict was read from, for the messages.
    """
    from pruning.models import read_weights
    from pruning.models.prunable import check_prunable

    kwargs = dict(kwargs or {})
    check_model_name(name, kwargs)
    if weights is not None and not isinstance(weights, Mapping):
        weights_name = weights
        weights = read_weights(weights)
    source = "the weights" if weights_name is None else f"weights {str(weights_name)!r}"
    model = create_model(name, num_classes=splits.num_classes, in_channels=splits.in_channels, **kwargs)
    if weights is not None:
        load_weights(model, weights, f"model {name!r}", source)
    model.eval()
    shape = (splits.in_channels, *splits.input_size)
    spec = ModelSpec(name, splits.num_classes, splits.in_channels, shape, layer_widths(model), dict(meta or {}), kwargs)
    check_fits(model, spec, splits)
    with torch.no_grad():
        out = model(torch.zeros(1, *shape))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != splits.num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"model {name!r} outputs {got} on one image, but dataset {splits.name!r} needs "
                              f"(1, {splits.num_classes}) class scores")
    if prunable:
        check_prunable(model, shape, f"model {name!r}")
    return model, spec, shape
