"""The unpruned model's target rows for the reconstruction: which rows each refitted layer
samples (:class:`~pruning.recovery.least_squares.RowBudget`), drawn over the whole calibration set,
and the original's outputs at those rows, from one pass of the original (see
:mod:`pruning.recovery.reconstruction` for the method)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.errors import InputError
from pruning.recovery.least_squares import LayerShape, RowBudget
from pruning.utils import batch_inputs, model_device, preserved_modes

__all__ = ["LayerTargets", "OriginalTargets", "original_targets", "check_layers"]

_SUPPORTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerTargets:
    """The original model's output of one layer at the sampled rows (image * output positions +
    output position over the whole calibration set, sorted): ``fit`` rows fit the weights,
    ``check`` rows measure the error (empty: the fit rows do); values are (rows, all channels)."""

    fit: torch.Tensor
    fit_values: torch.Tensor
    check: torch.Tensor
    check_values: torch.Tensor
    positions: int  # rows per image


@dataclass(frozen=True)
class OriginalTargets:
    """The unpruned model's target rows of a set of layers on a calibration set, drawn with
    ``budget`` and ``seed``: computed once (:func:`original_targets`) and reusable for every
    model pruned from the same original, as long as the batches are the same images in the
    same order (``images`` is checked)."""

    layers: Mapping[str, LayerTargets]
    images: int
    budget: RowBudget
    seed: int

    def __post_init__(self) -> None:
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise InputError(f"images must be an integer >= 1, got {self.images!r}")


def _output_rows(module: nn.Module, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The layer's output at ``rows`` (image * positions + position, within this output) as a
    (rows, channels) copy: a conv's positions, a linear's leading dimensions."""
    if isinstance(module, nn.Conv2d):  # indexed in place: a transposed copy of a whole batch would not be small
        output = output.flatten(2)  # (images, channels, positions)
        return output[rows // output.shape[2], :, rows % output.shape[2]]
    return output.reshape(-1, output.shape[-1]).index_select(0, rows)


def _positions(module: nn.Module, output: torch.Tensor) -> int:
    """Output rows per image."""
    return output[0].numel() // (output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1])


#: target values are kept in float16 (half the memory of every layer's rows, held from the
#: original's pass until each fit) when they fit its range; its 11-bit mantissa is far below the
#: fits' own error
_HALF_RANGE = 6e4


def _compact(values: torch.Tensor) -> torch.Tensor:
    """``values`` (a copy) in float16 when its finite values lie within float16's range."""
    if values.dtype == torch.float32 and values.numel() and bool(values.abs().max() <= _HALF_RANGE):
        return values.half()
    return values


class _Sampler:
    """Draws one layer's fit and check rows over the whole calibration set at its first call,
    then collects the original's values at those rows batch by batch."""

    def __init__(self, budget: RowBudget, images: int, generator: torch.Generator) -> None:
        self.budget, self.images, self.generator = budget, images, generator
        self.fit: torch.Tensor | None = None
        self.check = torch.zeros(0, dtype=torch.long)
        self.values: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.positions = 0
        self.seen = 0  # images collected so far

    def collect(self, module: nn.Module, output: torch.Tensor) -> None:
        if self.fit is None:
            self.positions = _positions(module, output)
            available = self.positions * self.images
            fit = self.budget.fit_rows(available, LayerShape.of(module))
            check = self.budget.check_rows(available, fit)
            if fit + check >= available:  # every row: no need to shuffle
                drawn = torch.arange(available) if check == 0 else torch.randperm(available, generator=self.generator)
            else:
                drawn = torch.randperm(available, generator=self.generator)[: fit + check]
            self.fit, self.check = drawn[:fit].sort().values, drawn[fit:].sort().values
        lo, hi = self.seen * self.positions, (self.seen + output.shape[0]) * self.positions
        for rows, values in zip((self.fit, self.check), self.values):
            inside = rows[(rows >= lo) & (rows < hi)] - lo
            values.append(_compact(_output_rows(module, output.detach(), inside.to(output.device))))
        self.seen += output.shape[0]

    def targets(self) -> LayerTargets:
        # float16 chunks next to float32 ones (values out of float16's range) concatenate to float32
        fit_values, check_values = (torch.cat(v) for v in self.values)
        return LayerTargets(self.fit, fit_values, self.check, check_values, self.positions)


def original_targets(
    original: nn.Module,
    layers: Sequence[str],
    batches: Iterable,
    *,
    budget: RowBudget | None = None,
    seed: int = 0,
    progress: bool = False,
) -> OriginalTargets:
    """One forward per batch through ``original``, keeping each layer's output at its sampled rows
    (all output channels); a layer called twice keeps its first call. A layer's rows depend on
    ``seed``, its name and shape and the calibration set only, not on the other layers listed: the
    targets of every layer a model could refit, computed once, serve each pruning of it exactly as
    its own targets would (:func:`pruning.recovery.recover` takes them in
    :class:`~pruning.recovery.RecoveryData`).
    ``progress``: a "reconstruction targets" bar on stderr, one step per batch."""
    budget = budget or RowBudget()
    inputs = [batch_inputs(batch) for batch in batches]
    if not inputs:
        raise InputError("recovery needs at least one calibration batch")
    modules = dict(original.named_modules())
    check_layers(modules, modules, layers)
    images = sum(x.shape[0] for x in inputs)
    samplers = {name: _Sampler(budget, images, _layer_generator(seed, name)) for name in dict.fromkeys(layers)}
    offset = [0]

    def keep(name: str):
        def hook(module, args, output):
            if samplers[name].seen == offset[0]:  # the layer's first call in this batch
                samplers[name].collect(module, output)
        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in samplers]
    try:
        with preserved_modes(original), torch.no_grad():
            original.eval()
            device = model_device(original)
            for x in tqdm(inputs, desc="reconstruction targets", unit="batch", disable=not progress, leave=False):
                original(x.to(device))
                offset[0] += x.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, sampler in samplers.items() if sampler.fit is None]
    if missing:
        raise InputError(f"layer(s) not called in a forward pass: {', '.join(missing)}")
    return OriginalTargets({name: s.targets() for name, s in samplers.items()}, images, budget, seed)


def _layer_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def check_layers(pruned: Mapping[str, nn.Module], original: Mapping[str, nn.Module], names: Iterable[str]) -> None:
    """Raise a one-line :class:`InputError` unless every name is a Conv2d / Linear of the same type in both."""
    for name in names:
        layer, reference = pruned.get(name), original.get(name)
        if layer is None or reference is None:
            raise InputError(f"unknown layer {name!r}")
        if not isinstance(layer, _SUPPORTED) or type(layer) is not type(reference):
            raise InputError(f"layer {name!r}: only Conv2d and Linear layers can be refitted")
