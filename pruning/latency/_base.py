"""The latency contract: where a model is deployed (:class:`LatencyTarget`) and a runtime that
times it there (:class:`LatencyRuntime`).

A runtime answers three questions, all on the target's device, batch and thread count:

* :meth:`LatencyRuntime.unavailable`: why it cannot run here (one line), or None. A sweep asks
  before any trial, so a missing provider or GPU is one line, not a crashed trial.
* :meth:`LatencyRuntime.time_layer`: the median milliseconds of one convolution of a given shape
  and in/out widths, alone (what :class:`~pruning.latency.table.LatencyTable` is built from).
* :meth:`LatencyRuntime.time_model`: the median milliseconds of a whole model as it is deployed
  (onnxruntime: exported to ONNX, checked against PyTorch, then timed);
  :meth:`LatencyRuntime.time_models` several models in alternating rounds.

Adding a runtime is one file with a ``@register_runtime("name")`` class plus one import line in
``pruning/latency/__init__.py``; ``tests/pruning/latency/test_runtimes.py`` checks every entry.
"""
from __future__ import annotations

import functools
import statistics
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Mapping

from torch import nn

from pruning.errors import InputError
from pruning.registry import Registry
from pruning.structure.measure import InputShape, LatencyResult, time_calls

__all__ = [
    "DEVICES", "LatencyTarget", "LatencyRuntime", "LayerShape", "RuntimeUnavailableError", "register_runtime",
    "create_runtime", "list_runtimes", "check_available", "time_on", "alternate_rounds",
]

DEVICES = ("cpu", "cuda")
_RUNTIMES: Registry[LatencyRuntime] = Registry("latency runtime")


class RuntimeUnavailableError(InputError):
    """The target's runtime cannot run on this machine (a missing provider, no GPU)."""


@dataclass(frozen=True)
class LatencyTarget:
    """Where and how latency is measured: ``runtime`` (:func:`list_runtimes`) on ``device``
    (cpu or cuda), a batch of ``batch`` images, ``threads`` intra-op threads, the median of
    ``repeats`` timed calls after ``warmup`` untimed ones."""

    runtime: str = "onnxruntime"
    device: str = "cpu"
    batch: int = 1
    threads: int = 1
    warmup: int = 3
    repeats: int = 20

    def __post_init__(self) -> None:
        if self.runtime not in _RUNTIMES:
            raise InputError(f"unknown latency runtime {self.runtime!r}; valid: {', '.join(list_runtimes())}")
        if self.device not in DEVICES:
            raise InputError(f"unknown latency device {self.device!r}; valid: {', '.join(DEVICES)}")
        for key, low in (("batch", 1), ("threads", 1), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"latency {key} must be an integer >= {low}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line a latency number is shown with: runtime, device, batch, threads, repeats."""
        return (f"{self.runtime} on {self.device}, batch {self.batch}, {self.threads} thread(s), "
                f"median of {self.repeats} runs")


@dataclass(frozen=True)
class LayerShape:
    """One convolution of a model as it runs: its widths, geometry and input size.

    ``groups`` as the module has them: 1 (dense), ``in_channels`` (depthwise) or other (grouped).
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    height: int
    width: int

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def geometry(self) -> tuple:
        """What the time of a layer depends on besides its widths (a table key). A depthwise
        layer's groups follow its width; any other layer's are part of its geometry, so that a
        dense and a grouped layer of one kernel and input size are timed apart."""
        groups = "depthwise" if self.depthwise else self.groups
        return (self.kernel, self.stride, self.padding, self.dilation, self.height, self.width, groups)

    def with_widths(self, in_channels: int, out_channels: int) -> LayerShape:
        groups = in_channels if self.depthwise else self.groups
        return LayerShape(in_channels, out_channels, self.kernel, self.stride, self.padding, self.dilation, groups,
                          self.height, self.width)


class LatencyRuntime(ABC):
    """Base class; see the module docstring for the contract."""

    #: registry name, set by :func:`register_runtime`
    name: ClassVar[str] = ""
    #: input widths that are multiples of this run on the runtime's fast kernels (the table
    #: measures such widths and the others apart)
    align: ClassVar[int] = 4

    @abstractmethod
    def unavailable(self, target: LatencyTarget) -> str | None:
        """Why ``target`` cannot be timed on this machine (one line), or None."""

    @abstractmethod
    def time_layer(self, layer: LayerShape, target: LatencyTarget) -> float:
        """Median milliseconds of the convolution ``layer`` alone (random weights, zero input)."""

    @abstractmethod
    def time_model(self, model: nn.Module, input_shape: InputShape, target: LatencyTarget) -> LatencyResult:
        """Median latency of ``model`` as deployed on this runtime."""

    def time_models(self, models: Mapping[str, nn.Module], input_shape: InputShape, target: LatencyTarget,
                    rounds: int = 3) -> dict[str, float]:
        """Median milliseconds of each of ``models`` over ``rounds`` rounds that time them in turn:
        a moment the machine is slower hits every model alike, and no model's number is one
        moment's. A runtime that prepares a model at a cost (an export) overrides this to
        prepare each once."""
        return alternate_rounds({key: functools.partial(self.time_model, model, input_shape, target)
                                 for key, model in models.items()}, rounds)


def time_on(call: Callable[[], Any], target: LatencyTarget) -> LatencyResult:
    """``call`` timed as ``target`` says: its warm-up and timed runs, its batch and threads."""
    return time_calls(call, batch_size=target.batch, threads=target.threads, warmup=target.warmup,
                      repeats=target.repeats)


def alternate_rounds(timers: Mapping[str, Callable[[], LatencyResult]], rounds: int) -> dict[str, float]:
    """The median over ``rounds`` of each timer's median milliseconds, the timers run in turn."""
    timings: dict[str, list[float]] = {key: [] for key in timers}
    for _ in range(rounds):
        for key, timer in timers.items():
            timings[key].append(timer().median_ms)
    return {key: statistics.median(values) for key, values in timings.items()}


def register_runtime(name: str):
    """Class decorator: register a :class:`LatencyRuntime` under ``name`` (duplicates raise)."""
    return _RUNTIMES.register_class(name)


def create_runtime(name: str) -> LatencyRuntime:
    """A new runtime by registry name (unknown names raise with the valid ones)."""
    return _RUNTIMES.create(name)


def list_runtimes() -> list[str]:
    return _RUNTIMES.names()


def check_available(target: LatencyTarget) -> LatencyRuntime:
    """The target's runtime, or a one-line :class:`RuntimeUnavailableError` saying why it
    cannot run here."""
    runtime = create_runtime(target.runtime)
    reason = runtime.unavailable(target)
    if reason is not None:
        raise RuntimeUnavailableError(f"latency runtime {target.runtime} on {target.device} is not available: {reason}")
    return runtime
