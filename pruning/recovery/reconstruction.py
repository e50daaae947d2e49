"""Reconstruction (recovery without retraining): refit the layers that read pruned channels.

This is the reconstruction step of channel pruning (He et al. 2017) and ThiNet (Luo et al. 2017),
the first stage of :class:`~pruning.recovery.RecoveryRecipe`.

SNPFI (Structured Network Pruning by measuring Filter-wise Interaction, arXiv 2307.00758) states
that after pruning it "can recover pruned model's performance effectively without iterative
training by minimizing the interaction difference". The abstract gives no formula; our reading:

    After pruning, every layer that CONSUMES a pruned group (reads its channels as inputs) is
    refitted in closed form, by ridge-regularised least squares, so that its output on
    calibration data matches the output of the same layer in the unpruned network.

For one layer, with X the rows of its inputs in the *pruned* model and Y the *original* model's
output of that layer (a conv's pre-BN output, bias included), the weights W (and a bias, as an
extra ones column of X, when the layer has one) solve

    W = (X^T X + lambda * s * D)^-1 X^T Y,    s = mean of the weight diagonal of X^T X,

where D is the identity on the weight columns and zero on the bias column (the bias is not
shrunk), so ``ridge`` (lambda) is relative to the input energy and unit-free.

* Conv2d: a row of X is one receptive field, unfolded as ``torch.nn.functional.unfold`` does
  with the layer's kernel, stride, padding and dilation (non-zero padding modes and string
  padding are applied with ``F.pad`` first); a row of Y is the output at that position.
  Grouped and depthwise convs are solved per group (group g's inputs predict group g's
  outputs), which is exact for their block-diagonal weights; groups == 1 is the plain case.
* Linear: a row of X is one input vector (leading dimensions flattened).
* X^T X, X^T Y and sum(Y^2) are accumulated over the batches in float64; patches are never
  all held: a batch is unfolded a few images at a time and, when a batch has more than
  ``max_rows_per_batch`` rows (images x output positions), a uniform random subset of that many
  rows is used (seeded with ``seed``; the same rows give ``error_before`` and ``error_after``).
* Layers are refitted one at a time in forward (call) order, each with the inputs of the
  CURRENT pruned model, so a layer's fit sees the corrections of the layers before it. Each
  layer costs one pass over the batches through both models, stopped right after that layer.
* A refit is kept only if it lowers the layer's error on the calibration rows; otherwise the
  weights are left as they were (status ``"kept"``). So an unpruned layer stays bit-identical.
* When a refitted layer's own outputs were pruned too (a consumer that is also the producer of
  a pruned group, as in plain VGG-like stacks), its target is the original output restricted to
  the kept channels: pass ``kept_outputs`` (``kept_outputs_of(space, kept)`` builds it from
  what :func:`~pruning.structure.engine.prune_model` returns).
* Only the weights and biases of the listed layers change. Layers without a bias (convs
  followed by BN) cannot absorb a mean shift; the BN after them is deliberately not touched.

The error reported per layer is the relative MSE ``sum((Y_hat - Y)^2) / sum(Y^2)`` over the
calibration rows, before (current pruned weights) and after the refit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pruning.errors import InputError
from pruning.structure import PruningSpace, layer_call_order
from pruning.utils import batch_inputs, model_device, preserved_modes

__all__ = ["ReconstructionReport", "reconstruct_consumers", "consumers_of", "kept_outputs_of"]

_SUPPORTED = (nn.Conv2d, nn.Linear)
_UNFOLD_BUDGET = 1 << 24  # elements of unfolded patches materialised at once


@dataclass(frozen=True)
class ReconstructionReport:
    """One layer's recovery.

    error_before / error_after: relative MSE of the layer's output vs the original model's on
    the calibration rows, with the weights before / after recovery (equal when not refitted).
    status: ``"refit"`` (new weights written) or ``"kept"`` (the fit did not lower the error, or
        the inputs were all zero; weights unchanged).
    rows: calibration rows (images x output positions) the fit used.
    """

    layer: str
    error_before: float
    error_after: float
    status: str
    rows: int


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def consumers_of(space: PruningSpace, pruned_groups: Iterable[str]) -> list[str]:
    """The consumer layers of the named groups, deduplicated, in forward order (the order the
    space's trace called them: module order for sequentially written models)."""
    wanted: set[str] = set()
    for name in pruned_groups:
        wanted.update(space[name].consumers)
    # the space's cost terms list every Conv2d/Linear in the order the trace called them
    order = {name: i for i, name in enumerate(space.call_order)}
    return sorted(wanted, key=lambda n: (order.get(n, len(order)), n))


def kept_outputs_of(space: PruningSpace, kept: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{layer: kept output channel indices}`` for every producer of the pruned groups in
    ``kept`` (the second value :func:`~pruning.structure.engine.prune_model` returns)."""
    return {producer: idx for name, idx in kept.items() for producer in space[name].producers}


def _capture(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's (input, output) in ``model(x)``, ending the forward pass right after it."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        seen["input"], seen["output"] = inputs[0].detach(), output.detach()
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "output" not in seen:
        raise ValueError("the layer was not called in the forward pass")
    return seen["input"], seen["output"]


def _conv_rows(layer: nn.Conv2d, x: torch.Tensor):
    """(patches, image slice) chunks of ``x`` unfolded for ``layer``: rows ordered image-major,
    then output position, as ``output.flatten(2).transpose(1, 2)`` orders them."""
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    n, c, h, w = x.shape
    per_image = c * layer.kernel_size[0] * layer.kernel_size[1] * _out_positions(layer, h, w, padding)
    step = max(1, _UNFOLD_BUDGET // max(1, per_image))
    for start in range(0, n, step):
        patches = F.unfold(
            x[start : start + step],
            layer.kernel_size,
            dilation=layer.dilation,
            padding=padding,
            stride=layer.stride,
        )
        yield patches.transpose(1, 2).reshape(-1, patches.shape[1]), slice(start, start + step)


def _out_positions(layer: nn.Conv2d, h: int, w: int, padding) -> int:
    pad = (padding, padding) if isinstance(padding, int) else padding
    size = [
        (dim + 2 * p - d * (k - 1) - 1) // s + 1
        for dim, p, d, k, s in zip((h, w), pad, layer.dilation, layer.kernel_size, layer.stride)
    ]
    return max(1, size[0] * size[1])


class _Accumulator:
    """Streams X^T X, X^T Y, sum(Y^2) and the current error per group, in float64."""

    def __init__(self, groups: int, width: int, outputs: int, bias: bool, device) -> None:
        self.groups, self.bias = groups, bias
        cols = width + int(bias)
        self.xtx = torch.zeros(groups, cols, cols, dtype=torch.float64, device=device)
        self.xty = torch.zeros(groups, cols, outputs, dtype=torch.float64, device=device)
        self.yy = 0.0
        self.err = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, current: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64).reshape(x.shape[0], self.groups, -1)
        if self.bias:
            x = torch.cat([x, x.new_ones(x.shape[0], self.groups, 1)], dim=2)
        y64 = y.to(torch.float64)
        self.err += float(((current.to(torch.float64) - y64) ** 2).sum())
        self.yy += float((y64**2).sum())
        y64 = y64.reshape(y.shape[0], self.groups, -1)
        self.xtx += torch.einsum("rgi,rgj->gij", x, x)
        self.xty += torch.einsum("rgi,rgo->gio", x, y64)
        self.rows += x.shape[0]

    def solve(self, ridge: float) -> torch.Tensor | None:
        """Per-group solutions (groups, cols, outputs), or None when the inputs were all zero."""
        weight_cols = self.xtx.shape[1] - int(self.bias)
        diag = torch.diagonal(self.xtx, dim1=1, dim2=2)[:, :weight_cols]
        scale = diag.mean(dim=1)  # s, per group
        if not torch.all(scale > 0):
            return None
        penalty = torch.zeros(self.xtx.shape[:2], dtype=self.xtx.dtype, device=self.xtx.device)
        penalty[:, :weight_cols] = ridge * scale[:, None]
        system = self.xtx + torch.diag_embed(penalty)
        try:
            return torch.linalg.solve(system, self.xty)
        except RuntimeError:  # singular (ridge == 0 and rank-deficient inputs)
            return torch.linalg.pinv(system) @ self.xty

    def relative_error(self, solution: torch.Tensor) -> float:
        """sum((X W - Y)^2) / sum(Y^2) from the accumulated moments."""
        fit = (solution * (self.xtx @ solution)).sum() - 2 * (solution * self.xty).sum()
        return _relative(max(0.0, float(fit) + self.yy), self.yy)

    def error_before(self) -> float:
        return _relative(self.err, self.yy)


def _relative(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


def _refit_layer(
    name: str,
    original: nn.Module,
    pruned: nn.Module,
    batches: Iterable,
    kept: torch.Tensor | None,
    ridge: float,
    max_rows: int,
    generator: torch.Generator,
) -> ReconstructionReport:
    layer = dict(pruned.named_modules())[name]
    reference = dict(original.named_modules())[name]
    is_conv = isinstance(layer, nn.Conv2d)
    groups = layer.groups if is_conv else 1
    outputs = layer.out_channels if is_conv else layer.out_features
    width = (layer.in_channels // groups) * layer.kernel_size[0] * layer.kernel_size[1] if is_conv else layer.in_features
    has_bias = layer.bias is not None
    acc = _Accumulator(groups, width, outputs // groups, has_bias, layer.weight.device)
    dev_orig, dev_pruned = model_device(original), model_device(pruned)

    for batch in batches:
        x = batch_inputs(batch)
        _, target = _capture(original, reference, x.to(dev_orig))
        inputs, current = _capture(pruned, layer, x.to(dev_pruned))
        target = target.to(layer.weight.device)
        channel_dim = 1 if is_conv else -1
        if kept is not None:
            target = target.index_select(channel_dim, kept.to(target.device))
        if target.shape != current.shape:
            raise InputError(
                f"layer {name!r}: original output {tuple(target.shape)} does not match the pruned "
                f"{tuple(current.shape)}; pass the kept output channels in kept_outputs"
            )
        if is_conv:
            y_rows = target.flatten(2).transpose(1, 2).reshape(-1, outputs)
            c_rows = current.flatten(2).transpose(1, 2).reshape(-1, outputs)
            chunks = _conv_rows(layer, inputs)
            per_image = target.shape[2] * target.shape[3]
        else:
            y_rows, c_rows = target.reshape(-1, outputs), current.reshape(-1, outputs)
            x_rows = inputs.reshape(-1, width)
            per_image = 0  # a single chunk starting at row 0
            chunks = [(x_rows, slice(0, None))]
        total = y_rows.shape[0]
        chosen = None
        if total > max_rows:
            chosen = torch.randperm(total, generator=generator)[:max_rows].sort().values
            chosen = chosen.to(y_rows.device)
        for patches, images in chunks:
            lo = (images.start or 0) * per_image
            hi = lo + patches.shape[0]
            if chosen is None:
                sel = slice(lo, hi)
                acc.add(patches, y_rows[sel], c_rows[sel])
            else:
                rows = chosen[(chosen >= lo) & (chosen < hi)]
                acc.add(patches[rows - lo], y_rows[rows], c_rows[rows])

    before = acc.error_before()
    solution = acc.solve(ridge)
    if solution is None:
        return ReconstructionReport(name, before, before, "kept", acc.rows)
    after = acc.relative_error(solution)
    if not after < before:
        return ReconstructionReport(name, before, before, "kept", acc.rows)

    # solution: (groups, cols, outputs per group) -> weight (outputs, *in shape)
    weight = solution[:, :width, :].transpose(1, 2).reshape(outputs, width)
    layer.weight.data.copy_(weight.reshape(layer.weight.shape).to(layer.weight.dtype))
    if has_bias:
        layer.bias.data.copy_(solution[:, width, :].reshape(outputs).to(layer.bias.dtype))
    return ReconstructionReport(name, before, after, "refit", acc.rows)


def reconstruct_consumers(
    original: nn.Module,
    pruned: nn.Module,
    layers: Sequence[str],
    batches: Iterable,
    *,
    ridge: float = 1e-3,
    progress: bool = False,
    kept_outputs: Mapping[str, torch.Tensor] | None = None,
    max_rows_per_batch: int = 4096,
    seed: int = 0,
) -> dict[str, ReconstructionReport]:
    """Refit ``layers`` of ``pruned`` in place so that their outputs match ``original``'s.

    ``batches`` yields ``(inputs, targets)`` (targets unused); it is iterated once per layer
    (a one-shot iterator is first materialised into a list). ``kept_outputs`` maps a layer whose
    own output channels were pruned to the original indices it keeps. Returns a report per
    layer, in the order the layers were refitted. See the module docstring for the method.
    """
    if ridge < 0:
        raise InputError(f"ridge must be >= 0, got {ridge}")
    if max_rows_per_batch < 1:
        raise InputError(f"max_rows_per_batch must be >= 1, got {max_rows_per_batch}")
    kept_outputs = dict(kept_outputs or {})
    modules_pruned = dict(pruned.named_modules())
    modules_orig = dict(original.named_modules())
    names = list(dict.fromkeys(layers))
    for name in names:
        layer, reference = modules_pruned.get(name), modules_orig.get(name)
        if layer is None or reference is None:
            raise InputError(f"unknown layer {name!r}")
        if not isinstance(layer, _SUPPORTED) or type(layer) is not type(reference):
            raise InputError(f"layer {name!r}: only Conv2d and Linear layers can be refitted")
    if not names:
        return {}
    if iter(batches) is batches:
        batches = list(batches)

    reports: dict[str, ReconstructionReport] = {}
    with preserved_modes(original, pruned), torch.no_grad():
        original.eval()
        pruned.eval()
        first = next(iter(batches), None)
        if first is None:
            raise InputError("recovery needs at least one calibration batch")
        wanted = set(names)
        order = [n for n in layer_call_order(pruned, batch_inputs(first).to(model_device(pruned))) if n in wanted]
        missing = [n for n in names if n not in order]
        if missing:
            raise InputError(f"layer(s) not called in a forward pass: {', '.join(missing)}")
        generator = torch.Generator().manual_seed(seed)
        for i, name in enumerate(order):
            report = _refit_layer(
                name, original, pruned, batches, kept_outputs.get(name),
                ridge, max_rows_per_batch, generator,
            )
            reports[name] = report
            if progress:
                print(
                    f"recovery [{i + 1}/{len(order)}] {name}: {report.status}, relative error "
                    f"{report.error_before:.4g} -> {report.error_after:.4g} ({report.rows} rows)",
                    file=sys.stderr,
                )
    return reports
