"""Where the collection pass reads activations: the hooked tensors of the groups, and their
layout as per-channel maps.

A hooked tensor is read as ``(B, C, H, W)`` maps of one of three kinds (:data:`MAP_KINDS`):

* ``"maps"``: a 4-D activation. Channels are dim 1, except for the outputs of ``nn.Linear`` and
  of an ``nn.LayerNorm`` over the last dim (and the inputs of an ``nn.Linear``), whose channels
  are the LAST dim: ConvNeXt-style blocks apply them to ``(N, H, W, C)`` tensors. Those are
  read as ``x.permute(0, 3, 1, 2)`` (a view, no copy).
* ``"tokens"``: a 3-D activation ``(N, T, C)`` (channels last, as a Linear/LayerNorm writes it:
  ViT-style tokens) or ``(N, C, L)`` of a Conv1d/BatchNorm1d. It is read as N images of T (or L)
  positions, ``(N, C, T, 1)``: the GAP is the mean over the tokens, APoZ counts over every token,
  ``value="spatial"`` histograms every token, the map entropy is over the tokens. A token
  sequence is not a 2-D map, so it has no map rank: ``rank_sum`` is None, as for Linear outputs.
* ``"vector"``: a 2-D ``(N, C)`` activation, one value per image and channel (``(N, C, 1, 1)``,
  recorded with map size (0, 0)).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pruning.errors import InputError
from pruning.structure.groups import ChannelGroup, ObservedOutput
from pruning.utils import preserved_modes

__all__ = ["MAP_KINDS", "observed_outputs", "channels_last", "as_maps", "hooked"]

MAP_KINDS = ("maps", "tokens", "vector")


def observed_outputs(model: nn.Module, groups: Sequence[ChannelGroup], read_inputs: bool = False) -> dict[str, ObservedOutput]:
    """{statistics key: observation} over the groups (with ``read_inputs``, their ``read``
    tensors too), checked against the model."""
    modules = dict(model.named_modules())
    observed: dict[str, ObservedOutput] = {}
    for group in groups:
        for obs in group.observed + (group.read if read_inputs else ()):
            if obs.module not in modules:
                raise InputError(f"group {group.name!r}: the model has no module {obs.module!r}")
            if observed.setdefault(obs.key, obs).relu != obs.relu:
                raise InputError(f"module {obs.module!r} is observed both with and without ReLU")
    if not observed:
        raise InputError("no groups to collect statistics for")
    return observed


def channels_last(module: nn.Module, side: str) -> bool:
    """Whether the tensor observed at ``module`` (its output, or its input for ``side="input"``)
    has its channels in the last dim when it has more than 2 dims: a Linear's input and output, a
    LayerNorm's output. A LayerNorm subclass with a forward of its own (torchvision's and timm's
    ``LayerNorm2d``, which permute to channels-last and back) keeps channels in dim 1."""
    if isinstance(module, nn.Linear):
        return True
    return side == "output" and isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward


def as_maps(output: Any, name: str, relu: bool, last: bool) -> tuple[torch.Tensor, str]:
    """The observed activation as float (B, C, H, W) and its kind (:data:`MAP_KINDS`); ``last``:
    the channels are the last dim (:func:`channels_last`)."""
    if not isinstance(output, torch.Tensor):
        raise InputError(f"module {name!r} returned {type(output).__name__}, expected a tensor")
    x = output.detach()
    if relu:
        x = F.relu(x)
    x = x.float()
    if x.dim() == 2:
        return x[:, :, None, None], "vector"
    if x.dim() not in (3, 4):
        raise InputError(f"module {name!r}: cannot collect statistics of a {x.dim()}-D output")
    if last:
        x = x.movedim(-1, 1)
    if x.dim() == 3:
        return x[..., None], "tokens"
    return x, "maps"


@contextlib.contextmanager
def hooked(model: nn.Module, observed: Mapping[str, ObservedOutput], fn: Callable[[str, torch.Tensor, str], None]):
    """Hooks that hand ``fn(key, maps, kind)`` (:func:`as_maps`) each observed tensor (a module's
    output, or the first input it is called with), in eval mode and no_grad; all undone on exit,
    even on error."""
    modules = dict(model.named_modules())
    handles = []
    with preserved_modes(model):
        try:
            for key, obs in observed.items():
                module = modules[obs.module]
                last = channels_last(module, obs.side)
                if obs.side == "input":
                    hook = lambda m, i, key=key, last=last: fn(key, *as_maps(i[0], key, False, last))  # noqa: E731
                    handles.append(module.register_forward_pre_hook(hook))
                else:
                    hook = lambda m, i, o, key=key, relu=obs.relu, last=last: fn(  # noqa: E731
                        key, *as_maps(o, key, relu, last))
                    handles.append(module.register_forward_hook(hook))
            model.eval()
            with torch.no_grad():
                yield
        finally:
            for handle in handles:
                handle.remove()
