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
from torch import nn
from tqdm.auto import tqdm

from pruning.errors import InputError
from pruning.recovery.least_squares import (
    LayerShape, RowBudget, input_rows, ridge_update, squared_errors,
    weights_of, write_weights,
)
from pruning.recovery.streaming import call_order_and_largest_output, chunked, run_streamed, traced
from pruning.recovery.targets import LayerTargets, OriginalTargets, check_layers, original_targets
from pruning.structure import PruningSpace
from pruning.utils import batch_inputs, model_device, preserved_modes

__all__ = ["ReconstructionReport", "reconstruct_consumers", "consumers_of", "kept_outputs_of"]

#: a refit must lower the check rows' relative error by more than this fraction of it plus this
#: much of the output energy: the rounding of the float16 targets (a relative error of about 4e-8)
#: is not a gain (an unpruned layer stays bit-identical)
_MIN_GAIN, _ROUNDING = 1e-6, 1e-6
#: where a layer fits every row there is (none is left to check), its errors are measured on
#: this fraction of the fit rows: as many as the check rows would be, at a quarter of the cost
_FIT_ROWS_MEASURED = 4


@dataclass(frozen=True)
class ReconstructionReport:
    """One layer's recovery.

    error_before / error_after: relative MSE of the layer's output vs the original model's on
    the check rows, with the weights before / after recovery (equal when not refitted).
    status: ``"refit"`` (new weights written) or ``"kept"`` (the fit did not lower the error, or
        the inputs were all zero; weights unchanged).
    rows: calibration rows (images x output positions) the fit used.
    check_rows: the rows the errors were measured on (0: measured on every fourth fit row,
        where the layer fitted every row there is).
    """

    layer: str
    error_before: float
    error_after: float
    status: str
    rows: int
    check_rows: int = 0


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


def _gather(layer: nn.Module, batches: Iterable[torch.Tensor], targets: LayerTargets) -> tuple[torch.Tensor, ...]:
    """The layer's fit and check input rows, (groups, rows, columns), from its inputs per batch."""
    shape = LayerShape.of(layer)
    found = tuple(torch.empty(rows.shape[0], shape.groups, shape.columns, device=layer.weight.device)
                  for rows in (targets.fit, targets.check))
    lo = 0
    for x in batches:
        hi = lo + x.shape[0] * targets.positions
        for rows, out in zip((targets.fit, targets.check), found):  # sorted: this batch's are a slice
            first, last = (int(torch.searchsorted(rows, bound)) for bound in (lo, hi))
            input_rows(layer, x, (rows[first:last] - lo).to(x.device), out[first:last])
        lo = hi
    return tuple(out.transpose(0, 1) for out in found)


def _fit(name: str, layer: nn.Module, batches: Iterable[torch.Tensor], targets: LayerTargets,
         kept: torch.Tensor | None, ridge: float) -> ReconstructionReport:
    """Refit ``layer`` from its inputs (every calibration batch's, in order) against the
    original's rows; writes the weights if the error on the check rows drops."""
    shape = LayerShape.of(layer)
    fit_target, check_target = targets.fit_values, targets.check_values
    if kept is not None:
        fit_target, check_target = fit_target[:, kept], check_target[:, kept]
    if fit_target.shape[1] != shape.groups * shape.outputs:
        raise InputError(
            f"layer {name!r}: the original has {fit_target.shape[1]} output channels, the pruned layer "
            f"{shape.groups * shape.outputs}; pass the kept output channels in kept_outputs"
        )
    device = layer.weight.device
    weights = weights_of(layer, shape)  # (groups, columns, outputs)
    fit_x, check_x = _gather(layer, batches, targets)
    fit_y, check_y = (y.to(device, torch.float32).reshape(-1, shape.groups, shape.outputs).transpose(0, 1)
                      for y in (fit_target, check_target))
    rows, checked = fit_x.shape[1], check_x.shape[1]
    change = ridge_update(fit_x, fit_y, weights, ridge, shape.columns - int(shape.bias))
    refit = weights if change is None else weights + change
    if not checked:  # every row was fitted: measured on every _FIT_ROWS_MEASURED-th of them
        check_x, check_y = fit_x[:, ::_FIT_ROWS_MEASURED], fit_y[:, ::_FIT_ROWS_MEASURED]
    energy = float(torch.linalg.vector_norm(check_y)) ** 2
    errors = squared_errors(check_x, [weights] if change is None else [weights, refit], check_y)
    before = _relative(errors[0], energy)
    if change is None:
        return ReconstructionReport(name, before, before, "kept", rows, checked)
    after = _relative(errors[1], energy)
    if not after < before * (1 - _MIN_GAIN) - _ROUNDING:
        return ReconstructionReport(name, before, before, "kept", rows, checked)
    write_weights(layer, shape, refit)
    return ReconstructionReport(name, before, after, "refit", rows, checked)


def _relative(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


def _refit_pass(pruned: nn.Module, order: Sequence[str], inputs: Sequence[torch.Tensor], targets: OriginalTargets,
                fit: "_FitOptions") -> dict[str, ReconstructionReport]:
    """The pruned model's pass over the calibration set: each listed layer is refitted when the
    pass reaches it, before it runs, so it sees the refits before it and passes on the output of
    its new weights. Streamed batch by batch through the model's fx graph within ``fit.memory``
    (see :mod:`pruning.recovery.streaming`); one forward of every image at once without a bound
    or when fx cannot trace the model."""
    reports: dict[str, ReconstructionReport] = {}
    bar = _progress_bar(len(order)) if fit.progress else None

    def refit(name: str, module: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        report = _fit(name, module, batches, targets.layers[name], fit.kept.get(name), fit.ridge)
        reports[name] = report
        if bar is not None:
            bar.set_postfix_str(f"{name}: {report.status} {report.error_before:.3g} -> {report.error_after:.3g}")
            bar.update()

    device = model_device(pruned)
    graph = traced(pruned, inputs[0][:1].to(device)) if fit.memory is not None else None
    try:
        if graph is not None:
            run_streamed(graph, [x.to(device) for x in inputs], set(order), refit, fit.memory)
        else:
            _one_pass(pruned, order, torch.cat(list(inputs)).to(device), refit)
    finally:
        if bar is not None:
            bar.close()
    return {name: reports[name] for name in order}


def _one_pass(pruned: nn.Module, order: Sequence[str], x: torch.Tensor, refit) -> None:
    modules = dict(pruned.named_modules())
    done: set[str] = set()

    def hook_for(name: str):
        def hook(module, args):
            if name not in done:
                done.add(name)
                refit(name, module, [args[0].detach()])
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in order]
    try:
        pruned(x)
    finally:
        for handle in handles:
            handle.remove()


def _progress_bar(total: int):
    return tqdm(total=total, desc="reconstruction", unit="layer", file=sys.stderr)


@dataclass(frozen=True)
class _FitOptions:
    ridge: float
    kept: Mapping[str, torch.Tensor]
    progress: bool
    memory: int | None  # bytes of the pruned pass's values held in memory; None: one pass


# long signature: the recovery recipe's options (ridge, kept outputs, rows, seed, targets, memory),
# each passed by name
def reconstruct_consumers(
    original: nn.Module,
    pruned: nn.Module,
    layers: Sequence[str],
    batches: Iterable,
    *,
    ridge: float = 1e-3,
    progress: bool = False,
    kept_outputs: Mapping[str, torch.Tensor] | None = None,
    budget: RowBudget | None = None,
    seed: int = 0,
    targets: OriginalTargets | None = None,
    memory_mib: int | None = 512,
) -> dict[str, ReconstructionReport]:
    """Refit ``layers`` of ``pruned`` in place so that their outputs match ``original``'s.

    ``batches`` yields ``(inputs, targets)`` (targets unused); it is iterated once. ``kept_outputs`` maps a layer whose
    own output channels were pruned to the original indices it keeps. ``budget`` bounds the rows
    each fit samples (default :class:`RowBudget`). ``targets``: the original's target rows when
    already computed by :func:`original_targets` on the same batches (then ``budget`` and
    ``seed`` are theirs); they must cover ``layers``. ``memory_mib`` bounds the pruned pass's
    activations held in memory (None: one pass over every image at once); with a bound, the
    original's and the pruned model's passes run over chunks of the batches whose largest
    activation takes at most 1/8 of it (and of at least 16 images).
    Returns a report per layer, in the order the layers were refitted (a tqdm bar on stderr with
    ``progress``). See the module docstring.
    """
    if ridge < 0:
        raise InputError(f"ridge must be >= 0, got {ridge}")
    if memory_mib is not None and (isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or memory_mib < 0):
        raise InputError(f"memory_mib must be an integer >= 0 or None, got {memory_mib!r}")
    kept = dict(kept_outputs or {})
    modules_pruned, modules_orig = dict(pruned.named_modules()), dict(original.named_modules())
    names = list(dict.fromkeys(layers))
    check_layers(modules_pruned, modules_orig, names)
    if not names:
        return {}
    with preserved_modes(original, pruned), torch.no_grad():
        original.eval()
        pruned.eval()
        inputs = [batch_inputs(batch) for batch in batches]
        if not inputs:
            raise InputError("recovery needs at least one calibration batch")
        wanted = set(names)
        called, image_bytes = call_order_and_largest_output(pruned, inputs[0][:1].to(model_device(pruned)))
        order = [n for n in called if n in wanted]
        missing = [n for n in names if n not in order]
        if missing:
            raise InputError(f"layer(s) not called in a forward pass: {', '.join(missing)}")
        images = sum(x.shape[0] for x in inputs)
        memory = None if memory_mib is None else memory_mib << 20
        if memory is not None:  # both models run over chunks of the batches
            inputs = chunked(inputs, memory, image_bytes)
        if targets is None:
            targets = original_targets(original, order, inputs, budget=budget, seed=seed, progress=progress)
        elif targets.images != images or not wanted <= set(targets.layers):
            uncovered = sorted(wanted - set(targets.layers))
            raise InputError(f"the precomputed targets cover {targets.images} images and not the layer(s) "
                             f"{', '.join(uncovered) or '-'}; the batches have {images} images")
        return _refit_pass(pruned, order, inputs, targets, _FitOptions(ridge, kept, progress, memory))
