"""Where models run, and in what precision: the one place that turns ``--device`` and ``--amp``
into a :class:`torch.device` and an autocast/GradScaler setting.

* :func:`resolve_device`: ``auto`` (CUDA if available, else the CPU), ``cpu``, ``cuda``,
  ``cuda:N`` or ``mps``; a name this machine cannot serve is a one-line
  :class:`~pruning.errors.InputError` naming the ones it can.
* :func:`eval_batch_size`: the batch every evaluation loader uses on a device, and
  :func:`images_per_pass`: how many images of a size one inference-only pass holds (on the CPU
  at most :data:`CPU_PASS_PIXELS` pixels, so that 224-px images do not take 128 at once).
* :class:`Precision`: mixed precision (``bf16`` or ``fp16``, CUDA only) for training and
  evaluation: :meth:`Precision.autocast` around the forward pass, :meth:`Precision.scaler` (a
  ``GradScaler``, enabled for ``fp16`` only) around the backward pass. ``Precision()`` (no amp)
  changes nothing: the loops run in float32 exactly as without it.

Callers move the model to the device themselves (``model.to(device)``); every loop in
:mod:`pruning` then puts its batches on the model's device (:func:`pruning.utils.model_device`).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import ContextManager

import torch

from pruning.errors import InputError

__all__ = [
    "AMP_MODES", "CPU_PASS_PIXELS", "DEVICE_NAMES", "Precision", "check_amp", "eval_batch_size", "images_per_pass",
    "resolve_device", "valid_devices",
]

#: every name :func:`resolve_device` understands (``cuda:N`` for a CUDA device index)
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: ``--amp`` modes: autocast dtype of each
AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_CUDA_INDEX = re.compile(r"cuda:(\d+)")
#: evaluation batch on the CPU: measured on ResNet-20 (28x28, 1 thread), scoring 2,000 images
#: takes 15-25% less time at 128 than at 512 (likely the cache: a 128-image batch's activations fit)
_CPU_EVAL_BATCH = 128
#: the most input pixels (images x height x width) one inference-only pass holds on the CPU: 32
#: images at 224 px. A ResNet-50 pass over 128 such images holds about 1.6 GB of activations
#: (docs/scale.md, prune memory); at 112 px and below the batch is not cut.
CPU_PASS_PIXELS = 32 * 224 * 224
#: evaluation batch on an accelerator, where a larger batch keeps it busy
_ACCELERATOR_EVAL_BATCH = 512


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def valid_devices() -> list[str]:
    """The device names this machine can serve, e.g. ``['auto', 'cpu']`` without a GPU."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda", *(f"cuda:{i}" for i in range(count))]
    if _mps_available():
        names.append("mps")
    return names


def eval_batch_size(device: torch.device | str, image_shape: tuple[int, ...] | None = None) -> int:
    """The batch size of evaluation loaders (accuracy only: no gradients, no BN statistics, so
    it changes the time and not the result), for images of ``image_shape`` (C, H, W) when known."""
    wanted = _CPU_EVAL_BATCH if torch.device(device).type == "cpu" else _ACCELERATOR_EVAL_BATCH
    return wanted if image_shape is None else images_per_pass(device, image_shape, wanted)


def images_per_pass(device: torch.device | str, image_shape: tuple[int, ...], wanted: int) -> int:
    """How many of ``wanted`` images of ``image_shape`` (..., H, W) one inference-only pass on
    ``device`` takes: all of them on an accelerator; on the CPU at most :data:`CPU_PASS_PIXELS`
    pixels' worth (at least one image)."""
    if torch.device(device).type != "cpu" or len(image_shape) < 2:
        return wanted
    return max(1, min(wanted, CPU_PASS_PIXELS // (image_shape[-1] * image_shape[-2])))


def resolve_device(name: str | torch.device | None = "auto", *, option: str = "--device") -> torch.device:
    """The :class:`torch.device` of ``name`` (None: ``auto``); ``option`` names the setting in
    the one-line error raised for a name that is unknown or not available on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    text = "auto" if name is None else str(name).strip().lower()
    here = ", ".join(valid_devices())
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or _CUDA_INDEX.fullmatch(text):
        if not torch.cuda.is_available():
            raise InputError(f"{option} {text}: CUDA is not available on this machine; valid here: {here}")
        match = _CUDA_INDEX.fullmatch(text)
        if match is not None:
            index, count = int(match.group(1)), torch.cuda.device_count()
            if index >= count:
                raise InputError(f"{option} {text}: this machine has {count} CUDA device(s) "
                                 f"(cuda:0..cuda:{count - 1}); valid here: {here}")
            return torch.device("cuda", index)
        return torch.device("cuda")
    if text == "mps":
        if not _mps_available():
            raise InputError(f"{option} mps: MPS is not available on this machine; valid here: {here}")
        return torch.device("mps")
    raise InputError(f"unknown {option} {name!r}; valid: {', '.join(DEVICE_NAMES)} (here: {here})")


def check_amp(amp: str | None, device: torch.device | str, *, option: str = "--amp",
              device_option: str = "--device") -> None:
    """Refuse an unknown ``amp`` mode, or any ``amp`` off CUDA (one-line InputError)."""
    if amp is None:
        return
    if amp not in AMP_MODES:
        raise InputError(f"unknown {option} {amp!r}; valid: {', '.join(AMP_MODES)}")
    device = torch.device(device)
    if device.type != "cuda":
        raise InputError(f"{option} needs a CUDA device; got {device_option} {device}")


@dataclass(frozen=True)
class Precision:
    """Mixed precision of a training or evaluation loop: ``amp`` is None (float32, the default),
    ``"bf16"`` or ``"fp16"`` (CUDA only; :meth:`check` refuses it elsewhere)."""

    amp: str | None = None

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_MODES:
            raise InputError(f"unknown amp {self.amp!r}; valid: {', '.join(AMP_MODES)}")

    @classmethod
    def of(cls, value: "Precision | str | None") -> "Precision":
        """A :class:`Precision` from itself, an amp mode name or None."""
        return value if isinstance(value, Precision) else cls(value)

    @property
    def enabled(self) -> bool:
        return self.amp is not None

    def check(self, device: torch.device) -> None:
        """Refuse mixed precision on a device that is not CUDA."""
        check_amp(self.amp, device, option="amp", device_option="a model on")

    def autocast(self, device: torch.device) -> ContextManager:
        """``torch.autocast`` on CUDA at the amp dtype; a no-op context without amp."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AMP_MODES[self.amp])

    def scaler(self, device: torch.device) -> "torch.amp.GradScaler | None":
        """A ``GradScaler`` for ``fp16``; None otherwise (bf16 has float32's range: no scaling)."""
        return torch.amp.GradScaler(device.type) if self.amp == "fp16" else None
