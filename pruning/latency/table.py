"""A latency model of one network on one runtime: a lookup table of layer latencies over their
in/out widths, measured once and calibrated on the whole model (as NetAdapt and AMC do).

Why a table: exporting and timing a pruned model costs seconds; a sweep screens many. The
table times every convolution of the unpruned model alone, on a grid of widths, once; a pruned
model's latency is then predicted in a forward pass of bookkeeping:

    predicted = scale * sum over its convolutions of table(layer, in width, out width)

* **Grid.** Per width dimension the multiples of a step (a multiple of 8, so that at most
  ``points`` widths are timed) and the full width; between grid widths the time is interpolated
  linearly (bilinearly over in x out). Layers of the same geometry and widths share entries.
* **Alignment.** A runtime's fast kernels need input widths that are multiples of
  :attr:`~pruning.latency.LatencyRuntime.align` (onnxruntime's CPU kernels: 4; measured, a 95-channel
  depthwise convolution runs 4.7x slower than a 96-channel one). The table therefore also times
  each grid width minus one and predicts an unaligned width from those.
* **Calibration.** Layers timed alone leave out what the model adds (activations, additions,
  pooling, layout changes between layers): ``scale`` is the whole unpruned model's measured
  latency over the table's sum for it.
* Grouped convolutions that are not depthwise are scaled from their unpruned time by their MACs.
* Layers other than convolutions (a classifier's ``Linear``) are left to ``scale``.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from pruning.errors import InputError
from pruning.latency._base import LatencyRuntime, LatencyTarget, LayerShape
from pruning.structure.measure import InputShape
from pruning.utils import model_device, preserved_modes

__all__ = ["LatencyTable", "build_latency_table", "layer_shapes", "grid_widths"]

#: table grid steps are multiples of this (the vector width of common CPU kernels)
STEP_MULTIPLE = 8


def layer_shapes(model: nn.Module, input_shape: InputShape) -> dict[str, LayerShape]:
    """Every ``nn.Conv2d`` of ``model`` by module name, as one forward pass of a zero image sees it."""
    shapes: dict[str, LayerShape] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def record(mod, inputs, _output, name=name):
                height, width = inputs[0].shape[-2:]
                shapes[name] = LayerShape(mod.in_channels, mod.out_channels, _pair(mod.kernel_size),
                                          _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation), mod.groups,
                                          int(height), int(width))
            hooks.append(module.register_forward_hook(record))
    try:
        with preserved_modes(model), torch.inference_mode():
            model.eval()
            model(torch.zeros(1, *input_shape, device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _pair(value) -> tuple[int, int]:
    if isinstance(value, str):  # padding="same"/"valid": the exporter writes explicit pads the same way
        raise ValueError(f"string padding {value!r} is not supported by the latency table")
    return tuple(value) if isinstance(value, tuple) else (int(value), int(value))


def grid_widths(full: int, points: int) -> tuple[int, ...]:
    """The widths a dimension of ``full`` channels is timed at: multiples of a step (a multiple of
    :data:`STEP_MULTIPLE` giving at most ``points`` of them) below ``full``, and ``full``; both
    must be integers >= 1 (one-line ``InputError``)."""
    for key, value in (("layer width", full), ("latency table points", points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{key} must be an integer >= 1, got {value!r}")
    step = STEP_MULTIPLE * max(1, -(-full // (points * STEP_MULTIPLE)))
    return tuple(sorted({*range(step, full, step), full}))


@dataclass(frozen=True)
class _Surface:
    """Times (ms) on a grid of in widths x out widths, interpolated bilinearly (clamped)."""

    ins: tuple[int, ...]
    outs: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][o]

    def at(self, in_width: int, out_width: int) -> float:
        (i0, i1, a), (o0, o1, b) = _bracket(self.ins, in_width), _bracket(self.outs, out_width)
        low = self.ms[i0][o0] * (1 - b) + self.ms[i0][o1] * b
        high = self.ms[i1][o0] * (1 - b) + self.ms[i1][o1] * b
        return low * (1 - a) + high * a

    def to_dict(self) -> dict[str, Any]:
        return {"ins": list(self.ins), "outs": list(self.outs), "ms": [list(r) for r in self.ms]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Surface:
        return cls(tuple(data["ins"]), tuple(data["outs"]), tuple(tuple(map(float, r)) for r in data["ms"]))


def _bracket(grid: Sequence[int], value: int) -> tuple[int, int, float]:
    """(lower index, upper index, weight of the upper) of ``value`` in the ascending ``grid``."""
    if value <= grid[0]:
        return 0, 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    upper = bisect.bisect_left(grid, value)
    lower = upper - 1
    return lower, upper, (value - grid[lower]) / (grid[upper] - grid[lower])


@dataclass(frozen=True)
class _LayerEntry:
    """One convolution of the unpruned model: its shape and the surfaces its time is read from
    (``aligned``: input widths multiples of the runtime's ``align``, and the full width;
    ``unaligned``: the others, the full width among them where it is unaligned; None where no
    width but the full one is unaligned)."""

    shape: LayerShape
    aligned: _Surface
    unaligned: _Surface | None

    def predict(self, shape: LayerShape, align: int) -> float:
        if not (shape.depthwise or shape.groups == 1):  # grouped: the unpruned time, scaled by MACs
            full = self.shape
            macs = shape.in_channels * shape.out_channels / shape.groups
            return self.aligned.at(full.in_channels, full.out_channels) * macs / (
                full.in_channels * full.out_channels / full.groups)
        surface = self.aligned if shape.in_channels % align == 0 or self.unaligned is None else self.unaligned
        return surface.at(shape.in_channels, 0 if shape.depthwise else shape.out_channels)


@dataclass(frozen=True)
class LatencyTable:
    """The latency model of one network on one target; see the module docstring.

    ``baseline_ms``: the unpruned model's measured latency; ``scale``: ``baseline_ms`` over the
    layers' sum; ``build_seconds``: what building the table cost; ``measurements``: layer
    timings it took; ``meta``: how it was built (``points``: the grid's widths per dimension).
    """

    target: LatencyTarget
    input_shape: InputShape
    align: int
    layers: Mapping[str, _LayerEntry]
    baseline_ms: float
    scale: float
    build_seconds: float
    measurements: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def layer_sum(self, shapes: Mapping[str, LayerShape]) -> float:
        missing = sorted(set(shapes) - set(self.layers))
        if missing:
            raise ValueError(f"the latency table has no layer {missing[0]!r}: it was built for another model")
        # pruning changes widths only: a layer of another kernel, stride or input size is another model's
        for name, shape in shapes.items():
            if _placement(shape) != _placement(self.layers[name].shape):
                raise ValueError(f"layer {name!r} is not the one the latency table was built for (kernel, stride, "
                                 f"padding, dilation or input size differ): it was built for another model")
        return sum(self.layers[name].predict(shape, self.align) for name, shape in shapes.items())

    def predict(self, model: nn.Module) -> float:
        """Predicted milliseconds of ``model`` (the table's network, pruned) on the target."""
        return self.scale * self.layer_sum(layer_shapes(model, self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(), "input_shape": list(self.input_shape), "align": self.align,
            "baseline_ms": self.baseline_ms, "scale": self.scale, "build_seconds": self.build_seconds,
            "measurements": self.measurements, "meta": dict(self.meta),
            "layers": {name: {"shape": _shape_dict(e.shape), "aligned": e.aligned.to_dict(),
                              "unaligned": None if e.unaligned is None else e.unaligned.to_dict()}
                       for name, e in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        layers = {name: _LayerEntry(_shape_from(e["shape"]), _Surface.from_dict(e["aligned"]),
                                    None if e["unaligned"] is None else _Surface.from_dict(e["unaligned"]))
                  for name, e in data["layers"].items()}
        return cls(LatencyTarget(**data["target"]), tuple(data["input_shape"]), int(data["align"]), layers,
                   float(data["baseline_ms"]), float(data["scale"]), float(data["build_seconds"]),
                   int(data["measurements"]), dict(data.get("meta", {})))


def _placement(shape: LayerShape) -> tuple:
    """What pruning leaves of a layer's geometry: all but its groups (a depthwise layer pruned to
    one channel is a dense one)."""
    return shape.kernel, shape.stride, shape.padding, shape.dilation, shape.height, shape.width


def _shape_dict(shape: LayerShape) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(shape).items()}


def _shape_from(data: Mapping[str, Any]) -> LayerShape:
    return LayerShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# long signature: what to time (model, shape), where (runtime, target) and how finely
def build_latency_table(model: nn.Module, input_shape: InputShape, runtime: LatencyRuntime, target: LatencyTarget,
                        points: int = 8, progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Time every convolution of ``model`` on ``runtime`` over its width grid (:func:`grid_widths`
    with ``points``), then the whole model, and calibrate; ``progress(done, total)`` after each
    layer timing."""
    started = time.perf_counter()
    shapes = layer_shapes(model, input_shape)
    grids = {name: _grid(shape, points, runtime.align) for name, shape in shapes.items()}
    wanted = sorted({(shape.geometry(), i, o) for name, shape in shapes.items() for i, o in grids[name]},
                    key=repr)
    measured: dict[tuple, float] = {}
    by_geometry = {shape.geometry(): shape for shape in shapes.values()}
    for done, (geometry, i, o) in enumerate(wanted, 1):
        measured[(geometry, i, o)] = runtime.time_layer(by_geometry[geometry].with_widths(i, o), target)
        if progress is not None:
            progress(done, len(wanted))
    layers = {name: _entry(shape, grids[name], measured, runtime.align) for name, shape in shapes.items()}
    baseline_ms = runtime.time_model(model, input_shape, target).median_ms
    total = sum(layers[name].predict(shape, runtime.align) for name, shape in shapes.items())
    return LatencyTable(target, tuple(input_shape), runtime.align, layers, baseline_ms,
                        baseline_ms / total if total > 0 else 1.0, time.perf_counter() - started, len(wanted),
                        meta={"points": points})


def _grid(shape: LayerShape, points: int, align: int) -> list[tuple[int, int]]:
    """The (in, out) widths a layer is timed at: both grids' product (the diagonal for a depthwise
    layer), and every aligned input width minus one."""
    outs = grid_widths(shape.out_channels, points)
    if shape.depthwise:
        ins = outs
        pairs = [(w, w) for w in ins] + [(w - 1, w - 1) for w in ins if w % align == 0 and w > align]
        return pairs
    if shape.groups > 1:  # grouped: only the unpruned shape (scaled by MACs when pruned)
        return [(shape.in_channels, shape.out_channels)]
    ins = grid_widths(shape.in_channels, points)
    unaligned = [w - 1 for w in ins if w % align == 0 and w > align]
    return [(i, o) for i in (*ins, *unaligned) for o in outs]


def _entry(shape: LayerShape, pairs: list[tuple[int, int]], measured, align: int) -> _LayerEntry:
    """The layer's surfaces from the timings ``measured`` at its grid ``pairs``. A depthwise
    layer's in and out widths are one: its surfaces have the single out width 0."""
    geometry = shape.geometry()
    ins = sorted({i for i, _ in pairs})
    outs = (0,) if shape.depthwise else tuple(sorted({o for _, o in pairs}))
    # the full width is measured as it is: an unaligned one belongs to both surfaces, so that
    # unaligned widths between the last grid width and it are interpolated, not clamped
    aligned = [i for i in ins if i % align == 0 or i == shape.in_channels]
    unaligned = [i for i in ins if i % align]

    def surface(widths: list[int]) -> _Surface:
        return _Surface(tuple(widths), outs, tuple(
            tuple(measured[(geometry, i, i if shape.depthwise else o)] for o in outs) for i in widths))

    return _LayerEntry(shape, surface(aligned), surface(unaligned) if unaligned and unaligned != aligned else None)
