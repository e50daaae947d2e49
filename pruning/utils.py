"""Small helpers every part of the package needs, written once.

* :func:`preserved_modes`: restore each submodule's own ``training`` flag after work that
  switches modes (``model.train(mode)`` would flatten deliberately mixed modes).
* :func:`model_device`: the device of a model's first parameter (CPU for a parameter-free one).
* :func:`batch_inputs`: the inputs of a batch that is either a tensor or ``(inputs, targets)``.
* :func:`atomic_write`: write a file through a temporary sibling and ``os.replace``, so a
  reader never sees half a file and a failure leaves the old file (or none).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["preserved_modes", "model_device", "batch_inputs", "atomic_write"]


@contextmanager
def preserved_modes(*models: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag of ``models`` on exit (also on error)."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (its first parameter's device; CPU if it has none)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def batch_inputs(batch: Any) -> torch.Tensor:
    """``batch[0]`` for an ``(inputs, targets)`` pair, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path``.

    The parent folder is created. ``path`` is replaced only once ``write`` returned; on any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
