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
* Layers are refitted in forward (call) order, each with the inputs of the CURRENT pruned
  model, so a layer's fit sees the corrections of the layers before it. The whole reconstruction
  costs one forward per batch through the original model (its target rows, kept for every
  listed layer at once) and ONE forward of the whole calibration set through the pruned model:
  a hook refits each layer when the pass reaches it and passes its new output on. The price is
  memory: the pruned pass holds the activations of all calibration images at one depth (plus
  the skip branches alive there), where one batch's would do for a layer-by-layer pass.
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
_GATHER_BUDGET = 1 << 24  # elements of input rows materialised at once


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


def _input_rows(layer: nn.Module, x: torch.Tensor):
    """A function ``rows -> inputs`` for the layer's rows (images x output positions, in
    :func:`_output_rows` order): a conv's receptive field per row, in ``F.unfold``'s column order
    (channel, kernel row, kernel column), gathered from a strided view of the padded input, so
    only the rows asked for are ever copied; a linear's input vectors."""
    if not isinstance(layer, nn.Conv2d):
        flat = x.reshape(-1, x.shape[-1])
        return lambda rows: flat.index_select(0, rows)
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    # windows of the dilated kernel's extent, then every dilation-th element: still a view
    view = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]
    positions, width = view.shape[2] * view.shape[3], view.shape[3]

    def gather(rows: torch.Tensor) -> torch.Tensor:
        image, position = rows // positions, rows % positions
        # advanced indices around a slice: the indexed dimension comes first -> (rows, c, kh, kw)
        return view[image, :, position // width, position % width].reshape(rows.shape[0], -1)

    return gather


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


@dataclass
class _Targets:
    """The original model's output rows of one layer, per calibration batch: the rows the fit
    uses (``chosen``: their indices in the batch's rows, None for all) and their values."""

    rows: list[torch.Tensor]
    chosen: list[torch.Tensor | None]


def _output_rows(layer: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """A layer's output as rows (images x output positions, channels): a conv's positions are
    rows, as ``F.unfold`` orders its patches; a linear's leading dimensions are flattened."""
    if isinstance(layer, nn.Conv2d):
        return output.flatten(2).transpose(1, 2).reshape(-1, output.shape[1])
    return output.reshape(-1, output.shape[-1])


def _original_targets(
    original: nn.Module,
    names: Sequence[str],
    inputs: Sequence[torch.Tensor],
    kept_outputs: Mapping[str, torch.Tensor],
    max_rows: int,
    generator: torch.Generator,
) -> dict[str, _Targets]:
    """One forward per batch through ``original``, keeping each layer's (subsampled) output rows;
    a layer called twice keeps its first call. The rows are drawn batch by batch in call order."""
    modules = dict(original.named_modules())
    targets = {name: _Targets([], []) for name in names}
    handles = []

    def keep(name: str):
        def hook(module, args, output):
            found = targets[name]
            if len(found.rows) > batch_index[0]:
                return
            channel_dim = 1 if isinstance(module, nn.Conv2d) else -1
            if name in kept_outputs:
                output = output.index_select(channel_dim, kept_outputs[name].to(output.device))
            rows = _output_rows(module, output.detach())
            chosen = None
            if rows.shape[0] > max_rows:
                chosen = torch.randperm(rows.shape[0], generator=generator)[:max_rows].sort().values.to(rows.device)
                rows = rows.index_select(0, chosen)  # a copy
            else:
                rows = rows.clone()  # may be a view of an output a later in-place op changes
            found.rows.append(rows)
            found.chosen.append(chosen)
        return hook

    batch_index = [0]
    for name in names:
        handles.append(modules[name].register_forward_hook(keep(name)))
    try:
        device = model_device(original)
        for batch_index[0], x in enumerate(inputs):
            original(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return targets


def _fit(
    name: str,
    layer: nn.Module,
    inputs: torch.Tensor,
    output: torch.Tensor,
    targets: _Targets,
    sizes: Sequence[int],
    ridge: float,
) -> ReconstructionReport:
    """Refit ``layer`` from its ``inputs`` / ``output`` on the whole calibration set (``sizes``:
    images per batch, in order) against the original's rows; writes the weights if the error drops."""
    is_conv = isinstance(layer, nn.Conv2d)
    groups = layer.groups if is_conv else 1
    outputs = layer.out_channels if is_conv else layer.out_features
    width = (layer.in_channels // groups) * layer.kernel_size[0] * layer.kernel_size[1] if is_conv else layer.in_features
    has_bias = layer.bias is not None
    acc = _Accumulator(groups, width, outputs // groups, has_bias, layer.weight.device)
    lo_image = 0
    for size, target, chosen in zip(sizes, targets.rows, targets.chosen):
        images = slice(lo_image, lo_image + size)
        lo_image += size
        current = _output_rows(layer, output[images])
        target = target.to(current.device)
        expected = current.shape[0] if chosen is None else chosen.shape[0]
        if target.shape != (expected, current.shape[1]):
            raise InputError(
                f"layer {name!r}: original output rows {tuple(target.shape)} do not match the pruned "
                f"{(expected, current.shape[1])}; pass the kept output channels in kept_outputs"
            )
        rows_of = _input_rows(layer, inputs[images])
        wanted = chosen if chosen is not None else torch.arange(current.shape[0], device=current.device)
        step = max(1, _GATHER_BUDGET // max(1, width * groups))
        for lo in range(0, wanted.shape[0], step):
            rows = wanted[lo : lo + step]
            acc.add(rows_of(rows), target[lo : lo + step], current.index_select(0, rows))

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


def _refit_in_one_pass(
    pruned: nn.Module,
    names: Sequence[str],
    inputs: Sequence[torch.Tensor],
    targets: Mapping[str, _Targets],
    ridge: float,
    progress: bool,
) -> dict[str, ReconstructionReport]:
    """One forward of the whole calibration set through ``pruned``: each listed layer is refitted
    when the pass reaches it (so it sees the refits before it) and passes on its new output."""
    modules = dict(pruned.named_modules())
    reports: dict[str, ReconstructionReport] = {}
    handles = []

    def refit(name: str):
        def hook(module, args, output):
            if name in reports:
                return None
            report = _fit(name, module, args[0].detach(), output.detach(), targets[name], sizes, ridge)
            reports[name] = report
            if progress:
                print(
                    f"recovery [{len(reports)}/{len(names)}] {name}: {report.status}, relative error "
                    f"{report.error_before:.4g} -> {report.error_after:.4g} ({report.rows} rows)",
                    file=sys.stderr,
                )
            # forward() itself runs no hooks: the layer's output with its new weights
            return module.forward(args[0]) if report.status == "refit" else None
        return hook

    sizes = [x.shape[0] for x in inputs]
    for name in names:
        handles.append(modules[name].register_forward_hook(refit(name)))
    try:
        pruned(torch.cat(list(inputs)).to(model_device(pruned)))
    finally:
        for handle in handles:
            handle.remove()
    return {name: reports[name] for name in names}


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

    ``batches`` yields ``(inputs, targets)`` (targets unused); it is iterated once. ``kept_outputs`` maps a layer whose
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

    with preserved_modes(original, pruned), torch.no_grad():
        original.eval()
        pruned.eval()
        inputs = [batch_inputs(batch) for batch in batches]
        if not inputs:
            raise InputError("recovery needs at least one calibration batch")
        wanted = set(names)
        order = [n for n in layer_call_order(pruned, inputs[0][:1].to(model_device(pruned))) if n in wanted]
        missing = [n for n in names if n not in order]
        if missing:
            raise InputError(f"layer(s) not called in a forward pass: {', '.join(missing)}")
        generator = torch.Generator().manual_seed(seed)
        targets = _original_targets(original, order, inputs, kept_outputs, max_rows_per_batch, generator)
        return _refit_in_one_pass(pruned, order, inputs, targets, ridge, progress)
