"""Models from outside the registry: ``torchvision:<name>``, ``timm:<name>`` and an import path
``package.module:factory``.

A model name is one of

* a registered name (``resnet20``, see :func:`~pruning.models.list_models`),
* ``torchvision:<name>``: any torchvision classification model
  (``torchvision.models.list_models(module=torchvision.models)``), randomly initialised with
  ``num_classes`` outputs; for ``in_channels != 3`` its first conv is replaced by one reading
  ``in_channels`` channels,
* ``timm:<name>``: any timm model (the optional extra ``pip install 'prunesweep[timm]'``),
  built with ``num_classes`` and ``in_chans=in_channels``,
* ``package.module:factory``: a function or ``nn.Module`` class that is imported and called with
  the model options as keyword arguments, plus ``num_classes`` and ``in_channels`` where its
  signature names them (only ``num_classes`` when it takes ``**kwargs``).

Weights are never downloaded (``--weights FILE`` loads a state_dict, see
:mod:`pruning.models.weights`). Every in-place activation of a built model is switched to
out-of-place, so forward hooks that record a BatchNorm output see that output, not the
activation applied to it afterwards (the outputs are the same).

An import path names code that is run, also when a checkpoint of such a model is loaded: the
factory must be a Python function or class from an installed (non-standard-library) module.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping

from torch import nn

from pruning.errors import InputError, one_line
from pruning.imports import import_attribute
from pruning.registry import UnknownNameError, accepted_options

__all__ = [
    "TIMM_PREFIX", "TORCHVISION_PREFIX", "ModelSourceError", "build_external", "check_external", "import_root",
    "is_external", "model_kind",
]

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
#: options a dataset sets; a model's own options must not
_DATA_OPTIONS = ("num_classes", "in_channels")
#: options that would download pretrained weights
_DOWNLOAD_OPTIONS = {"torchvision": ("weights",), "timm": ("pretrained", "pretrained_cfg", "checkpoint_path")}


class ModelSourceError(InputError):
    """An import path that does not import, is not a factory, or does not build an nn.Module;
    or an option the model does not take."""


def is_external(name: str) -> bool:
    """Whether ``name`` is a ``torchvision:``/``timm:`` name or an import path (not a registered name)."""
    return isinstance(name, str) and ":" in name


def model_kind(name: str) -> str:
    """``torchvision``, ``timm``, ``import`` or ``registry``."""
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if name.startswith(TIMM_PREFIX):
        return "timm"
    return "import" if is_external(name) else "registry"


def import_root(name: str) -> str | None:
    """For an import-path model, the absolute ``sys.path`` entry its top-level module is found
    under (where a worker process must look to build it too); else None. The module is located,
    not imported."""
    import importlib.util
    from pathlib import Path

    if model_kind(name) != "import":
        return None
    top = name.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    location = Path(spec.origin).resolve()
    # a package's origin is <root>/<top>/__init__.py, a module's <root>/<top>.py
    return str(location.parent.parent if spec.submodule_search_locations else location.parent)


def check_external(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Refuse a bad external name or option without building the model (fast, before any data)."""
    _factory(name, dict(options or {}))


def build_external(name: str, num_classes: int = 10, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build the external model ``name`` (see the module docstring); one-line errors for a bad
    name, a bad option or a factory that does not return an ``nn.Module``."""
    factory, kind = _factory(name, options)
    try:
        if kind == "torchvision":
            model = factory(weights=None, num_classes=num_classes, **options)
            _adapt_first_conv(model, in_channels)
        elif kind == "timm":
            model = factory(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes,
                            in_chans=in_channels, **options)
        else:
            valid = accepted_options(factory)
            # a factory taking **kwargs gets num_classes only: in_channels is this project's convention
            data = {"num_classes": num_classes} if valid is None else {
                k: v for k, v in {"num_classes": num_classes, "in_channels": in_channels}.items() if k in valid}
            model = factory(**data, **options)
    except InputError:
        raise
    except Exception as err:
        raise ModelSourceError(f"model {name!r} could not be built: {one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model {name!r} returned {type(model).__name__!r}, not a torch.nn.Module")
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return model


def _factory(name: str, options: dict[str, Any]) -> tuple[Callable[..., Any], str]:
    """The callable that builds ``name`` and its kind, after checking ``options``."""
    kind = model_kind(name)
    for option in options:
        if not isinstance(option, str) or not option.isidentifier():
            raise ModelSourceError(f"model {name!r}: option {option!r} is not a keyword name")
        if option in _DATA_OPTIONS:
            raise ModelSourceError(f"model {name!r}: option {option!r} comes from the dataset; drop it")
        if option in _DOWNLOAD_OPTIONS.get(kind, ()):
            raise ModelSourceError(f"model {name!r}: option {option!r} would download weights; "
                                   "give a state_dict file as weights instead")
    if kind == "torchvision":
        return _torchvision_factory(name[len(TORCHVISION_PREFIX):]), kind
    if kind == "timm":
        return _timm_factory(name[len(TIMM_PREFIX):]), kind
    factory = _import_factory(name)
    valid = accepted_options(factory)
    unknown = [] if valid is None else sorted(set(options) - set(valid))
    if unknown:
        shown = [v for v in valid if v not in _DATA_OPTIONS]
        raise ModelSourceError(f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
                               f"valid: {', '.join(shown) or '(none)'}")
    return factory, kind


def _unknown(kind: str, name: str, valid: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see {_LISTING[kind]}"
    return UnknownNameError(f"unknown {kind} model {name!r}{hint}")


_LISTING = {
    "torchvision": "torchvision.models.list_models(module=torchvision.models)",
    "timm": "timm.list_models()",
}


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        raise _unknown("torchvision", name, valid)
    return torchvision.models.get_model_builder(name)


def _timm_factory(name: str) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError:
        raise ModelSourceError(
            f"model 'timm:{name}' needs timm, which is not installed: pip install 'prunesweep[timm]'"
        ) from None
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    return timm.create_model


def _import_factory(path: str) -> Callable[..., Any]:
    target = import_attribute(path, "model", ModelSourceError)
    if inspect.isclass(target):
        if not issubclass(target, nn.Module):
            raise ModelSourceError(f"model {path!r} is the class {target.__name__}, not a torch.nn.Module")
    elif not inspect.isfunction(target):
        raise ModelSourceError(f"model {path!r} is a {type(target).__name__}, not a function or nn.Module class")
    return target


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d by one reading ``in_channels`` channels (kaiming-initialised)."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ModelSourceError(f"cannot adapt the grouped first conv {name!r} to {in_channels} input channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    1, conv.bias is not None, conv.padding_mode)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)

