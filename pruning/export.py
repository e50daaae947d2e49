"""A deployable model: export to ONNX or TorchScript, checked against PyTorch before it is kept.

:func:`export_model` writes ``model`` to a temporary file next to the target, runs that file
(ONNX in onnxruntime's ``CPUExecutionProvider``, TorchScript reloaded with ``torch.jit.load``) on
a seeded random batch of the model's input shape and compares its outputs with PyTorch's; only a
file that passes replaces the target, so a model that cannot be exported or a failed check is an
:class:`ExportError` and leaves nothing behind.

The check passes when ``max |exported - pytorch| <= TOLERANCE * max(1, max |pytorch logits|)``:
an absolute 1e-4 for logits of magnitude up to 1, relative to the largest logit above that
(float32 kernels of different runtimes sum in different orders; a real export bug is off by far
more).

ONNX: the ``torch.export``-based exporter (``dynamo=True``, which needs ``onnxscript``), opset
:data:`OPSET`, input ``input`` and output ``logits`` with a dynamic batch dimension, weights
inside the one file. It is the exporter torch 2.14 maintains; the legacy TorchScript-based one
(``dynamo=False``) also exports the registered models (resnet20, vgg16, mobilenet_v1) with the
same outputs but is deprecated and warns that it will be removed. TorchScript: ``torch.jit.trace``
(the registered CNNs have no data-dependent control flow, and tracing accepts any module that
runs, unlike scripting), saved with ``torch.jit.save``.

:func:`exported_latency` times the exported file the way
:func:`pruning.structure.measure_latency` times a module: warm-up runs, then the median of timed
runs on a batch of zeros with a fixed number of intra-op threads.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from pruning.errors import InputError
from pruning.structure.measure import InputShape, LatencyResult, check_timing, measure_latency, time_calls
from pruning.utils import atomic_write, preserved_modes

__all__ = [
    "FORMATS", "OPSET", "TOLERANCE", "INPUT_NAME", "OUTPUT_NAME", "ExportError", "ExportCheck", "CheckBatch", "Timing",
    "export_model", "check_export", "exported_latency", "onnx_session",
]

FORMATS = ("onnx", "torchscript")
#: the ONNX opset written (torch 2.14's default; onnxruntime 1.2x runs it)
OPSET = 20
#: the check's tolerance on the largest absolute output difference, relative to the logits' scale
TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the batch torch.export traces with: 1 would specialise the batch dimension to 1
_TRACE_BATCH = 2
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


class ExportError(InputError):
    """A model that cannot be exported to the format, or an exported file that fails the check."""


@dataclass(frozen=True)
class CheckBatch:
    """The batch an exported file is checked on: ``size`` random images drawn with ``seed``."""

    size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ExportError(f"the check's batch size must be >= 1, got {self.size!r}")


@dataclass(frozen=True)
class Timing:
    """How :func:`exported_latency` times a file: ``threads`` intra-op threads, ``warmup``
    untimed calls, then the median of ``repeats`` timed ones. Checked when built."""

    threads: int = 1
    warmup: int = 3
    repeats: int = 10

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        check_timing(1, self.warmup, self.repeats)


@dataclass(frozen=True)
class ExportCheck:
    """The exported file against PyTorch on one seeded random batch (and on its first sample
    alone, which exercises the dynamic batch dimension)."""

    format: str
    batch_size: int
    max_abs_diff: float
    logits_scale: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "rule": f"max_abs_diff <= {TOLERANCE:g} * max(1, max |logits|)"}


def export_model(model: nn.Module, input_shape: InputShape, path: str | os.PathLike, format: str = "onnx", *,
                 check: CheckBatch = CheckBatch(), what: str = "the model") -> ExportCheck:
    """Write ``model`` (run in eval mode, its modes restored) as ``format`` to ``path`` and
    check the file on the ``check`` batch; ``path`` is written only when the check passed.
    ``what`` names the model in error messages."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    if Path(path).is_dir():
        raise ExportError(f"{path} is a directory; give the path of a file to write")
    checks: list[ExportCheck] = []

    def write(tmp: Path) -> None:
        with preserved_modes(model):
            model.eval()
            (_write_onnx if format == "onnx" else _write_torchscript)(model, input_shape, tmp, what)
            result = check_export(model, input_shape, tmp, format, check=check, what=what)
        if not result.passed:
            raise ExportError(f"the {format} export of {what} does not match PyTorch: max abs difference "
                              f"{result.max_abs_diff:.3g} > tolerance {result.tolerance:.3g}")
        checks.append(result)

    atomic_write(path, write)
    return checks[0]


def check_export(model: nn.Module, input_shape: InputShape, path: str | os.PathLike, format: str, *,
                 check: CheckBatch = CheckBatch(), what: str = "the model") -> ExportCheck:
    """Compare the exported file at ``path`` with ``model`` on the seeded ``check`` batch."""
    batch_size = check.size
    batch = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(check.seed))
    run = _runner(path, format, what)
    with preserved_modes(model), torch.inference_mode():
        model.eval()
        expected = model(batch).float().numpy()
    diff = 0.0
    for inputs, reference in ((batch, expected), (batch[:1], expected[:1])):
        got = run(inputs)
        if got.shape != reference.shape:
            raise ExportError(f"the {format} export of {what} outputs shape {list(got.shape)} for a batch of "
                              f"{inputs.shape[0]}, PyTorch {list(reference.shape)}")
        diff = max(diff, float(np.max(np.abs(got.astype(np.float64) - reference))))
    scale = max(1.0, float(np.max(np.abs(expected))))
    return ExportCheck(format, batch_size, diff, scale, TOLERANCE * scale)


def exported_latency(path: str | os.PathLike, format: str, input_shape: InputShape, batch_size: int = 1,
                     timing: Timing = Timing()) -> LatencyResult:
    """Median latency of the exported file as ``timing`` says: onnxruntime (CPU,
    ``timing.threads`` intra-op threads) for ONNX, the reloaded module under
    :func:`~pruning.structure.measure_latency` for TorchScript."""
    threads, warmup, repeats = timing.threads, timing.warmup, timing.repeats
    if format == "torchscript":
        return measure_latency(_load_torchscript(path), input_shape, batch_size, threads=threads, warmup=warmup,
                               repeats=repeats)
    check_timing(batch_size, warmup, repeats)
    session = onnx_session(path, threads)
    feed = {INPUT_NAME: np.zeros((batch_size, *input_shape), dtype=np.float32)}
    return time_calls(lambda: session.run(None, feed), batch_size=batch_size, threads=threads, warmup=warmup,
                      repeats=repeats)


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime session of ``path`` on the CPU with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers on stderr
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# -- writing ------------------------------------------------------------------------------------


def _write_onnx(model: nn.Module, input_shape: InputShape, path: Path, what: str) -> None:
    example = torch.randn(_TRACE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        # verbose=False: the exporter's progress lines would otherwise go to stdout (and break --json)
        with _quiet():
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except torch.onnx.OnnxExporterError as err:
        raise ExportError(f"{what} cannot be exported to ONNX: {_reason(err)}") from None


def _write_torchscript(model: nn.Module, input_shape: InputShape, path: Path, what: str) -> None:
    example = torch.randn(_TRACE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
    except RuntimeError as err:
        raise ExportError(f"{what} cannot be traced to TorchScript: {_reason(err)}") from None


# -- checking -----------------------------------------------------------------------------------


def _runner(path: str | os.PathLike, format: str, what: str) -> Callable[[torch.Tensor], np.ndarray]:
    """``inputs -> outputs`` of the exported file; an ExportError when it cannot be loaded."""
    if format == "torchscript":
        module = _load_torchscript(path)

        def run_torchscript(inputs: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return module(inputs).float().numpy()

        return run_torchscript
    try:
        session = onnx_session(path)
    except Exception as err:  # onnxruntime's errors (Fail, InvalidGraph, ...) share no base class but Exception
        raise ExportError(f"onnxruntime cannot load the ONNX export of {what}: {_reason(err)}") from None

    def run_onnx(inputs: torch.Tensor) -> np.ndarray:
        try:
            return session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        except Exception as err:  # as above: onnxruntime's errors
            raise ExportError(f"onnxruntime cannot run the ONNX export of {what}: {_reason(err)}") from None

    return run_onnx


def _load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED)
        return torch.jit.load(str(path), map_location="cpu").eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' chatter (prints, deprecation warnings) kept off the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'")


def _reason(err: BaseException) -> str:
    """One line out of an exporter's or runtime's multi-line message: the operator without an
    ONNX mapping where that is the cause, else the innermost summary or first line."""
    text = _ANSI.sub("", str(err))
    missing = _NO_FUNCTION.search(text)
    if missing:
        return f"operator {missing.group(1)} has no ONNX mapping"
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        text = _ANSI.sub("", str(cause))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__
