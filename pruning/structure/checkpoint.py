"""Save and load (pruned) models without pickling modules.

A checkpoint is one ``torch.save`` file holding a ``state_dict`` and a small JSON spec: the
model name and its constructor arguments, the input shape, the width of every
Conv2d / Linear / BatchNorm layer (a readable summary) and the model's layout
(:func:`model_layout`): per module, the shape of every parameter and buffer and its numeric
attributes (``in_channels``, ``groups``, ``normalized_shape``, ``num_heads``...). Loading builds
the model by name, gives each module the recorded attributes and tensor shapes
(:func:`apply_layout`: whatever pruning narrowed, of any layer type, including norms over
channels in any layout, layer-scale parameters and attention heads) and loads the weights with
``torch.load(weights_only=True)``, so the file itself never unpickles code. The name is a registered one, ``torchvision:<name>``,
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
from pruning.errors import InputError, first_line
from pruning.utils import TensorFileError, atomic_write, check_finite, load_tensor_file

FORMAT = "prunesweep-checkpoint/2"
#: the format before layouts: widths of Conv2d/Linear/BatchNorm layers only (still read)
_FORMAT_WIDTHS_ONLY = "prunesweep-checkpoint/1"
_RESIZABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: its name (registered, ``torchvision:``/``timm:`` or an import
    path; None for a module built some other way), the dataset's classes and channels, the
    model's own keyword options ``kwargs``, the recorded layer widths and the model's
    ``layout`` (:func:`model_layout`; empty: the model as its constructor builds it)."""

    name: str | None
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int, int]
    widths: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise CheckpointError(f"ModelSpec.name must be a non-empty string or None, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise CheckpointError(f"ModelSpec.kwargs must map option names to values, got {self.kwargs!r}")
        if self.kwargs and self.name is None:
            raise CheckpointError("ModelSpec.kwargs need a model name to be passed to")
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        _check_layout(self.layout)

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
                "layout": self.layout,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        if data.get("format") not in (FORMAT, _FORMAT_WIDTHS_ONLY):
            raise CheckpointError(f"unsupported checkpoint format {data.get('format')!r}; expected {FORMAT}")
        return cls(
            name=data["name"],
            num_classes=int(data["num_classes"]),
            in_channels=int(data["in_channels"]),
            input_shape=tuple(data["input_shape"]),
            widths=data["widths"],
            meta=data["meta"],
            kwargs=data.get("kwargs", {}),
            layout=data.get("layout", {}),
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_structural(value: Any) -> bool:
    """A value a module's shapes or forward may depend on: a number or a tuple/list of integers
    (flags, strings and submodules are left to the constructor)."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return _is_number(value)


def _module_layout(module: nn.Module) -> dict[str, Any]:
    tensors = {**module._parameters, **module._buffers}
    return {
        "attributes": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and _is_structural(v)
        },
        "tensors": {k: list(t.shape) for k, t in tensors.items() if t is not None},
    }


def model_layout(model: nn.Module) -> dict[str, dict[str, dict[str, Any]]]:
    """Per module (``""``: the model itself): ``tensors``, the shape of each of its own
    parameters and buffers, and ``attributes``, its public numeric attributes (channels,
    features, groups, ``normalized_shape``, ``num_heads``, ``head_dim``...): everything pruning
    may narrow, whatever the layer type."""
    return {name: _module_layout(m) for name, m in model.named_modules()}


def _check_layout(layout: Any) -> None:
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"ModelSpec.layout {what}")

    if not isinstance(layout, Mapping):
        raise fail(f"must map module names to their layout, got {type(layout).__name__}")
    for name, entry in layout.items():
        if not isinstance(entry, Mapping) or set(entry) != {"attributes", "tensors"}:
            raise fail(f"of module {name!r} must have exactly 'attributes' and 'tensors'")
        if not all(_is_structural(v) for v in entry["attributes"].values()):
            raise fail(f"of module {name!r} has an attribute that is not a number or a list of integers")
        if not all(_is_structural(s) or s == [] for s in entry["tensors"].values()):
            raise fail(f"of module {name!r} has a tensor shape that is not a list of integers")


def _layout_from_widths(widths: Mapping[str, Mapping[str, int]], state: Mapping[str, torch.Tensor]) -> dict:
    """The layout a ``prunesweep-checkpoint/1`` file implies: its Conv2d/Linear/BatchNorm widths
    as attributes, and the shapes of the tensors in its ``state_dict``."""
    names = {
        "conv": {"in": "in_channels", "out": "out_channels", "groups": "groups"},
        "linear": {"in": "in_features", "out": "out_features"},
        "norm": {"out": "num_features"},
    }
    layout: dict[str, dict[str, dict[str, Any]]] = {}
    for name, w in widths.items():
        kind = "conv" if "groups" in w else "linear" if "in" in w else "norm"
        layout[name] = {"attributes": {names[kind][k]: v for k, v in w.items()}, "tensors": {}}
    for key, tensor in state.items():
        module, _, local = key.rpartition(".")
        layout.setdefault(module, {"attributes": {}, "tensors": {}})["tensors"][local] = list(tensor.shape)
    return layout


def apply_layout(model: nn.Module, layout: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> nn.Module:
    """Give each module of ``model`` the recorded attributes and tensor shapes, in place (the
    resized tensors are uninitialised: the weights are loaded afterwards). Raises
    :class:`CheckpointError` for a module, attribute or tensor the model does not have, and for
    a non-persistent buffer whose shape changed (the weights cannot refill it)."""
    modules = dict(model.named_modules())
    unknown = [n for n in layout if n not in modules]
    if unknown:
        raise CheckpointError(f"checkpoint layers not found in the model: {', '.join(unknown[:5])}")
    for name, entry in layout.items():
        _apply_attributes(modules[name], name, entry["attributes"])
        _apply_shapes(modules[name], name, entry["tensors"])
    return model


def _apply_attributes(module: nn.Module, name: str, attributes: Mapping[str, Any]) -> None:
    for attribute, value in attributes.items():
        current = vars(module).get(attribute)
        if current is None or not _is_structural(current) or isinstance(current, (tuple, list)) != isinstance(
                value, (tuple, list)):
            raise CheckpointError(f"layer {name or '(model)'!r} has no numeric attribute {attribute!r} "
                                  f"like the checkpoint's {value!r}")
        setattr(module, attribute, tuple(value) if isinstance(current, tuple) else value)


def _apply_shapes(module: nn.Module, name: str, shapes: Mapping[str, list[int]]) -> None:
    for local, shape in shapes.items():
        qualified = f"{name}.{local}" if name else local
        store = module._parameters if local in module._parameters else module._buffers
        current = store.get(local)
        if current is None:
            raise CheckpointError(f"checkpoint tensor {qualified!r} is not in the model")
        if list(current.shape) == list(shape):
            continue
        if store is module._buffers and local in module._non_persistent_buffers_set:
            raise CheckpointError(f"buffer {qualified!r} is not saved with the weights and has another shape "
                                  f"in the checkpoint ({list(shape)}, here {list(current.shape)})")
        resized = torch.empty(shape, dtype=current.dtype, device=current.device)
        store[local] = nn.Parameter(resized, current.requires_grad) if store is module._parameters else resized


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec) -> None:
    """Write ``model``'s weights and ``spec`` (widths and layout refreshed from the model), atomically;
    a model with a NaN or infinite weight or buffer is refused (one line naming it), nothing written."""
    check_finite(model, "the model to save")
    spec = replace(spec, widths=layer_widths(model), layout=model_layout(model))
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
        reason = first_line(err)
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
    """The model of ``spec`` (a fresh registered one, or ``model``) given the recorded layout,
    with ``state`` loaded strictly, in eval mode; ``load_state_dict``'s RuntimeError when the
    weights do not fit. A spec without a layout (written before layouts were recorded) resizes
    its Conv2d/Linear/BatchNorm widths and the tensors of ``state``."""
    if model is None:
        model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels, **spec.kwargs)
    apply_layout(model, spec.layout or _layout_from_widths(spec.widths, state))
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


# long signature: orchestrator/sweeps/baseline.py (moving to orchestrator/experiment elsewhere)
# passes every keyword by name; weights and weights_name become one value together with that caller
def model_for_data(
    name: str,
    splits: Any,
    *,
    weights: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    kwargs: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    prunable: bool = True,
    weights_name: str | os.PathLike | None = None,
    task: Any = None,
) -> tuple[nn.Module, ModelSpec, tuple[int, int, int]]:
    """``(model, spec, input shape)``: model ``name`` built for ``splits``'s classes and
    channels with ``kwargs``, ``weights`` (a state_dict or its file) loaded, in eval mode.

    Checked up front, each failure one line: the name and options, that the weights fit, that the
    model runs on the dataset's images and outputs what ``task`` needs (a
    :class:`~pruning.tasks.Task`; None: classification's class scores), and (``prunable``) that the
    pruning engine can trace and prune it (the layer it cannot handle is named). ``weights_name``:
    the file a ``weights`` state_dict was read from, for the messages.
    """
    from pruning.tasks import Classification
    from pruning.models import read_weights
    from pruning.structure.prunable import check_prunable

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
    spec = ModelSpec(name, splits.num_classes, splits.in_channels, shape, layer_widths(model), dict(meta or {}), kwargs,
                     model_layout(model))
    check_fits(model, spec, splits)
    task = task or Classification()
    expected = task.output_shape(splits)
    with torch.no_grad():
        out = model(torch.zeros(1, *shape))
    if not isinstance(out, torch.Tensor) or (expected is not None and tuple(out.shape) != (1, *expected)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        needs = f"dataset {splits.name!r} needs" if task.name == "classification" else f"task {task.name!r} needs"
        raise CheckpointError(f"model {name!r} outputs {got} on one image, but {needs} "
                              f"{(1, *expected)} {task.output_description}")
    if prunable:
        check_prunable(model, shape, f"model {name!r}")
    return model, spec, shape
