"""A latency model of one network on one runtime: a lookup table of layer latencies over their
in/out widths, measured once and calibrated on the whole model (as NetAdapt and AMC do).

Why a table: exporting and timing a pruned model costs seconds; a sweep screens many. The
table times every convolution of the unpruned model alone, on a grid of widths, once; a pruned
model's latency is then predicted in a forward pass of bookkeeping:

    predicted = calibrated(sum over its convolutions of table(layer, in width, out width))

* **Grid.** Per width dimension the multiples of a step (a multiple of 8, so that at most
  ``points`` widths are timed) and the full width; between grid widths the time is interpolated
  linearly (bilinearly over in x out). Layers of the same geometry and widths share entries.
* **Alignment.** A runtime's fast kernels need input widths that are multiples of
  :attr:`~pruning.latency.LatencyRuntime.align` (onnxruntime's CPU kernels: 4; measured, a 95-channel
  depthwise convolution runs 4.7x slower than a 96-channel one). The table therefore also times
  each grid width minus one and predicts an unaligned width from those.
* **Calibration.** Layers timed alone leave out what the model adds (activations, additions,
  pooling, layout changes between layers) and what it saves (layers that share a layout need no
  conversion between them). The whole model is therefore measured unpruned and at two uniformly
  pruned widths (half of every layer's channels, rounded to multiples of 8, and the same made
  unaligned), and ``predicted = aligned * S_aligned + unaligned * S_unaligned + offset`` is fitted
  to the three (``S``: the table's sums over the layers with aligned and unaligned input widths).
* Grouped convolutions that are not depthwise are scaled from their unpruned time by their MACs.
* Layers other than convolutions (a classifier's ``Linear``) are left to ``scale``.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pruning.errors import InputError
from pruning.latency._base import LatencyRuntime, LatencyTarget, LayerShape
from pruning.structure.measure import InputShape
from pruning.utils import model_device, preserved_modes

__all__ = ["LatencyTable", "build_latency_table", "layer_shapes", "grid_widths", "calibration_variants", "fit_calibration"]

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
        surface = self.unaligned if self.unaligned_input(shape, align) else self.aligned
        return surface.at(shape.in_channels, 0 if shape.depthwise else shape.out_channels)

    def unaligned_input(self, shape: LayerShape, align: int) -> bool:
        """Whether ``shape`` is read from the unaligned surface (its input width is not a multiple
        of ``align``, and the layer had aligned widths to lose)."""
        return shape.in_channels % align != 0 and self.unaligned is not None


@dataclass(frozen=True)
class LatencyTable:
    """The latency model of one network on one target; see the module docstring.

    ``baseline_ms``: the unpruned model's measured latency; ``calibration``: the fitted
    (aligned, unaligned, offset) of the module docstring; ``build_seconds``: what building the
    table cost; ``measurements``: layer timings it took; ``meta``: how it was built (``points``:
    the grid's widths per dimension; ``calibration_ms``: the measured calibration models).
    """

    target: LatencyTarget
    input_shape: InputShape
    align: int
    layers: Mapping[str, _LayerEntry]
    baseline_ms: float
    calibration: tuple[float, float, float]
    build_seconds: float
    measurements: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def layer_sums(self, shapes: Mapping[str, LayerShape]) -> tuple[float, float]:
        """The table's sums over the layers of ``shapes`` with aligned and with unaligned input widths."""
        missing = sorted(set(shapes) - set(self.layers))
        if missing:
            raise ValueError(f"the latency table has no layer {missing[0]!r}: it was built for another model")
        sums = [0.0, 0.0]
        for name, shape in shapes.items():
            # pruning changes widths only: a layer of another kernel, stride or input size is another model's
            if _placement(shape) != _placement(self.layers[name].shape):
                raise ValueError(f"layer {name!r} is not the one the latency table was built for (kernel, stride, "
                                 f"padding, dilation or input size differ): it was built for another model")
            sums[self.layers[name].unaligned_input(shape, self.align)] += self.layers[name].predict(shape, self.align)
        return sums[0], sums[1]

    def predict(self, model: nn.Module) -> float:
        """Predicted milliseconds of ``model`` (the table's network, pruned) on the target."""
        aligned, unaligned = self.layer_sums(layer_shapes(model, self.input_shape))
        a, u, offset = self.calibration
        # a negative offset cannot make a pruned model cost nothing: a hundredth of the unpruned at least
        return max(a * aligned + u * unaligned + offset, 0.01 * self.baseline_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(), "input_shape": list(self.input_shape), "align": self.align,
            "baseline_ms": self.baseline_ms, "calibration": list(self.calibration), "build_seconds": self.build_seconds,
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
                   float(data["baseline_ms"]), tuple(map(float, data["calibration"])), float(data["build_seconds"]),
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
    table = LatencyTable(target, tuple(input_shape), runtime.align, layers, 0.0, (1.0, 1.0, 0.0), 0.0, len(wanted))
    calibration_models = {"unpruned": model, **calibration_variants(model, input_shape)}
    measured_ms = runtime.time_models(calibration_models, input_shape, target)
    sums = {key: list(table.layer_sums(layer_shapes(m, input_shape))) for key, m in calibration_models.items()}
    return replace(table, baseline_ms=measured_ms["unpruned"], calibration=fit_calibration(sums, measured_ms),
                   build_seconds=time.perf_counter() - started,
                   meta={"points": points, "calibration_ms": measured_ms, "calibration_sums": sums})


def calibration_variants(model: nn.Module, input_shape: InputShape) -> dict[str, nn.Module]:
    """``model`` pruned uniformly to half of every prunable layer's channels: ``aligned`` keeps
    multiples of 8, ``unaligned`` one channel fewer (an odd width). Channels are kept by index:
    their weights do not change a latency. Empty where the model has nothing to prune."""
    from pruning.structure import PruningSpace, prune_model

    example = torch.zeros(1, *input_shape, device=model_device(model))
    space = PruningSpace.build(model, example)
    groups = [g for g in space.select("full") if getattr(g, "units", None) is None or g.units.width == 1]
    if not groups:
        return {}
    scores = {g.name: -torch.arange(g.size, dtype=torch.float32) for g in groups}
    half = {g.name: min(g.size, max(STEP_MULTIPLE, STEP_MULTIPLE * round(g.size / 2 / STEP_MULTIPLE)))
            for g in groups if g.size > STEP_MULTIPLE}
    if not half:
        return {}
    # unaligned: one channel under an aligned width of at least two grid steps, so that no width
    # falls under a layer's first grid width (where the table can only clamp)
    unaligned = {name: min(space[name].size, max(width, 2 * STEP_MULTIPLE)) - 1 for name, width in half.items()}
    return {name: prune_model(model, example, space, keep, scores)[0]
            for name, keep in (("aligned", half), ("unaligned", unaligned))}


def fit_calibration(sums: Mapping[str, tuple[float, float]], measured_ms: Mapping[str, float]) -> tuple[float, float, float]:
    """(aligned, unaligned, offset) of ``measured = aligned * S_a + unaligned * S_u + offset``
    fitted to the calibration models (least squares). The offset may be negative: every layer
    timed alone pays a call's and a layout conversion's overhead that it does not pay inside the
    model. With too few models, or a fit that is not physical (a layer coefficient <= 0), a term
    is dropped (the offset, then the unaligned one): at least the unpruned model's ratio is kept."""
    keys = list(measured_ms)
    rows = np.array([[sums[k][0], sums[k][1], 1.0] for k in keys])
    target = np.array([measured_ms[k] for k in keys])
    for columns in ([0, 1, 2], [0, 1], [0, 2], [0]):
        if len(keys) < len(columns) or np.linalg.matrix_rank(rows[:, columns]) < len(columns):
            continue
        solution, *_ = np.linalg.lstsq(rows[:, columns], target, rcond=None)
        full = dict(zip(columns, solution))
        if all(full[c] > 0 for c in columns if c < 2):
            aligned = float(full[0])
            return aligned, float(full.get(1, aligned)), float(full.get(2, 0.0))
    ratio = measured_ms[keys[0]] / max(sum(sums[keys[0]]), 1e-12)
    return ratio, ratio, 0.0


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
