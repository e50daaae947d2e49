"""Small helpers every part of the package needs, written once.

* :func:`preserved_modes`: restore each submodule's own ``training`` flag after work that
  switches modes (``model.train(mode)`` would flatten deliberately mixed modes).
* :func:`model_device`: the device of a model's first parameter (CPU for a parameter-free one).
* :func:`batch_inputs`: the inputs of a batch that is either a tensor or ``(inputs, targets)``.
* :func:`atomic_write`: write a file through a temporary sibling and ``os.replace``, so a
  reader never sees half a file and a failure leaves the old file (or none).
* :func:`check_finite`: a one-line :class:`~pruning.errors.InputError` naming the first
  parameter or buffer of a model that holds NaN or infinity.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pruning.errors import InputError

__all__ = ["preserved_modes", "model_device", "batch_inputs", "atomic_write", "check_finite", "TensorFileError",
           "load_tensor_file"]


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


def check_finite(model: nn.Module, what: str) -> None:
    """Raise :class:`InputError` naming the first floating-point parameter or buffer of ``model``
    with a NaN or infinite value (and how many of its tensors have one); ``what`` names the
    model in the message, e.g. ``"the baseline"``."""
    bad = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        total = len(list(model.parameters())) + len(list(model.buffers()))
        raise InputError(f"{what} has non-finite values (NaN or inf) in {bad[0]!r} ({len(bad)} of {total} tensors); "
                         f"retrain it or load other weights")


class TensorFileError(Exception):
    """Why :func:`load_tensor_file` could not read a file; ``kind`` is one of ``missing`` (no such
    file), ``not_torch`` (not a ``torch.save`` zip), ``pickled`` (objects other than tensors and
    plain data: refused, since loading them would run the file's code) or ``unreadable``
    (anything else; ``detail`` is the first line of the cause). Callers word it for their users."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def load_tensor_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a :class:`TensorFileError`."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise TensorFileError("missing")
    if not zipfile.is_zipfile(path):
        raise TensorFileError("not_torch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and zip errors all mean the same to a user
        # torch's own message advises weights_only=False, which would execute the file's code
        if "weights_only" in str(err):
            raise TensorFileError("pickled") from None
        raise TensorFileError("unreadable", str(err).strip().splitlines()[0] if str(err).strip()
                              else type(err).__name__) from None
