"""The model registry and the helpers every model family shares.

Each model family lives in its own module and registers factories with ``register_model``;
``create_model`` builds one by name for the CLI and the sweeps. Every factory has the
signature ``(num_classes: int = 10, in_channels: int = 3) -> nn.Module`` so that one dataset
description (classes, channels) is enough to build any model.

``check_input_shape`` runs one forward on zeros so that a model/dataset mismatch (wrong channel
count, input too small for the downsampling) fails up front with a one-line message instead of
a multi-line PyTorch error deep inside a sweep trial.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from pruning.registry import Registry, accepted_options
from pruning.errors import InputError, first_line
from pruning.models.external import build_external, check_external, is_external
from pruning.utils import model_device, preserved_modes

ModelFactory = Callable[..., nn.Module]

_MODELS: Registry[nn.Module] = Registry("model")


class InputShapeError(InputError):
    """Raised when a model cannot run on inputs of a given (channels, height, width) shape."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes=10, in_channels=3) -> nn.Module`` as ``name``;
    a name registered twice raises ValueError."""
    return _MODELS.register(name)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **options: object) -> nn.Module:
    """Build the model registered as ``name``, or the external model ``torchvision:<name>``,
    ``timm:<name>`` or ``package.module:factory`` (see :mod:`pruning.models.external`).

    Raises ``UnknownNameError`` (listing the valid names) for an unknown name and TypeError
    (listing the valid options) for an option a registered factory does not take;
    ``ModelSourceError`` for a bad external model or option.
    """
    if is_external(name):
        return build_external(name, num_classes=num_classes, in_channels=in_channels, **options)
    return _MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **options)


def check_model_name(name: str, options: Mapping[str, object] | None = None) -> None:
    """Refuse an unknown model name or an option it does not take, as a one-line
    :class:`~pruning.errors.InputError`, without building the model."""
    options = dict(options or {})
    if not isinstance(name, str) or not name:
        raise InputError(f"a model name must be a non-empty string, got {name!r}")
    if is_external(name):
        check_external(name, options)
        return
    valid = accepted_options(_MODELS.get(name)) or []
    unknown = sorted(set(options) - set(valid)) if valid else []
    data_set = sorted(set(options) & {"num_classes", "in_channels"})
    if data_set:
        raise InputError(f"model {name!r}: option {data_set[0]!r} comes from the dataset; drop it")
    if unknown:
        own = [v for v in valid if v not in ("num_classes", "in_channels")]
        raise InputError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(own) or '(none)'}"
        )


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return _MODELS.names()


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def check_input_shape(model: nn.Module, shape: tuple[int, int, int], name: str = "model") -> None:
    """Raise ``InputShapeError`` unless ``model`` runs on a batch of one ``shape`` = (C, H, W) input.

    The forward runs in eval mode without gradients; every submodule's train/eval mode is
    restored afterwards.
    """
    shape_text = "x".join(str(size) for size in shape)
    with preserved_modes(model):
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, *shape, device=model_device(model)))
        except RuntimeError as error:
            first_conv = _first_conv(model)
            if first_conv is not None and shape[0] != first_conv.in_channels:
                expected = first_conv.in_channels
                reason = f"it expects {expected} input channel{'s' if expected != 1 else ''}, got {shape[0]}"
            else:
                reason = first_line(error)
            raise InputShapeError(f"{name} cannot run on inputs of shape {shape_text}: {reason}") from error


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero biases and unit/zero BatchNorm affine
    parameters, in place."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
