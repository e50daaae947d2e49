"""Weights a user brings for a model: a plain ``state_dict`` file.

The file is read with ``torch.load(weights_only=True)``, so it can hold tensors and plain data
only; a whole pickled ``nn.Module`` is refused with how to save its state_dict instead
(``torch.save(model.state_dict(), path)``). Weights that do not fit the model are refused
naming the first key whose shape differs, or the first missing or unexpected key, instead of
``load_state_dict``'s many-line report.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from pruning.errors import InputError
from pruning.utils import TensorFileError, load_tensor_file

__all__ = ["WeightsError", "read_weights", "load_weights"]

_SAVE_HINT = "save the weights with torch.save(model.state_dict(), path)"


class WeightsError(InputError):
    """A weights file that cannot be read as a state_dict or does not fit the model."""


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``, or a one-line :class:`WeightsError`."""
    shown = str(path)
    try:
        state = load_tensor_file(path)
    except TensorFileError as err:
        raise WeightsError({
            "missing": f"weights file {shown!r} does not exist",
            "not_torch": f"weights file {shown!r} is not a torch.save file; {_SAVE_HINT}",
            "pickled": f"weights file {shown!r} holds pickled objects (a whole nn.Module?), not a state_dict; "
                       f"{_SAVE_HINT}",
        }.get(err.kind, f"weights file {shown!r} cannot be read ({err.detail})")) from None
    if isinstance(state, Mapping) and {"spec", "state_dict"} <= set(state):
        raise WeightsError(f"{shown!r} is a prunesweep checkpoint: pass it as the checkpoint, not as weights")
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"weights file {shown!r} holds a {type(state).__name__}, not a state_dict; {_SAVE_HINT}")
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"weights file {shown!r} is not a plain state_dict: {not_tensors[0]!r} is not a tensor; "
                           f"{_SAVE_HINT}")
    return dict(state)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = "the model",
                 source: str = "the weights") -> nn.Module:
    """Load ``state`` into ``model`` strictly, after checking every key and shape (one-line
    :class:`WeightsError` naming the first that does not fit)."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"{source} do not fit {name}: {key} has shape {_shape(state[key])} there, "
                               f"{_shape(tensor)} in the model")
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(f"{source} do not fit {name}: missing key {missing[0]}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(f"{source} do not fit {name}: unexpected key {unexpected[0]}"
                           + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    model.load_state_dict(state, strict=True)
    return model


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(s) for s in tensor.shape) or "scalar"
