"""The pieces of one layer's least-squares refit: how many rows it samples, how a row's inputs
are gathered, and the ridge solve (see :mod:`pruning.recovery.reconstruction` for the method)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pruning.errors import InputError

__all__ = ["RowBudget", "LayerShape", "input_rows", "weights_of", "write_weights", "ridge_update", "squared_errors", "gram"]

#: columns of one strip of :func:`gram`: large enough for an efficient product, small enough
#: that the skipped lower blocks are most of the saving
_GRAM_BLOCK = 256


@dataclass(frozen=True)
class RowBudget:
    """How many rows (images x output positions) of the calibration set one layer's fit samples.

    A layer with ``w`` columns per group (inputs per receptive field, plus one for a bias) and
    ``o`` outputs per group, of which the calibration set offers ``A`` rows, fits on

        n = min(A, max(min_rows, min_rows_per_column * w, min(rows_per_column * w, affordable)))

    rows, where ``affordable`` is the largest n whose fit costs at most ``cost`` times the
    layer's own forward multiply-adds over the calibration set (``A * w * o``): the normal
    equations cost ``n * w^2`` (used when n >= w), their dual form ``n^2 * w`` (when n < w),
    plus ``2 * n * w * o`` for the residual and the right-hand side.

    ``min_rows_per_column`` is the floor the accuracy needs, whatever the cost: with few rows
    per column the fit follows the sampled rows, not the layer (the accuracy each floor keeps:
    docs/scale.md, "Rows per column"). Above it, up to ``rows_per_column``, rows are taken while
    the fit stays within ``cost``: early layers at large input resolutions (many rows, few
    columns) take them, wide late layers (few rows, many columns) stay at the floor or at every
    row they have. At the defaults the floor is the cap: every fit takes 32 rows per column, or
    every row the calibration set has.
    ``check_fraction`` more rows (at least ``min_rows // 4``, when the calibration set has them)
    are drawn to measure the error before and after the fit.
    """

    rows_per_column: float = 32.0
    min_rows_per_column: float = 32.0
    cost: float = 0.25
    min_rows: int = 256
    check_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not self.rows_per_column > 0:
            raise InputError(f"rows_per_column must be > 0, got {self.rows_per_column}")
        if not 0 <= self.min_rows_per_column <= self.rows_per_column:
            raise InputError(f"min_rows_per_column must be in [0, rows_per_column={self.rows_per_column}], "
                             f"got {self.min_rows_per_column}")
        if not self.cost > 0:
            raise InputError(f"cost must be > 0, got {self.cost}")
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) or self.min_rows < 1:
            raise InputError(f"min_rows must be an integer >= 1, got {self.min_rows!r}")
        if not 0 <= self.check_fraction <= 1:
            raise InputError(f"check_fraction must be in [0, 1], got {self.check_fraction}")

    def fit_rows(self, available: int, shape: "LayerShape") -> int:
        w, o = shape.columns, shape.outputs
        allowed = self.cost * available * o  # the forward's A * w * o multiply-adds, over w
        primal = allowed / (w + 2 * o)  # n * (w^2 + 2 w o) <= cost * A * w * o
        affordable = primal if primal >= w else math.sqrt(o * o + allowed) - o  # n^2 w + 2 n w o <= ...
        wanted = max(self.min_rows, self.min_rows_per_column * w, min(self.rows_per_column * w, affordable))
        return available if wanted >= available else math.ceil(wanted)

    def check_rows(self, available: int, fit: int) -> int:
        if self.check_fraction == 0:
            return 0
        return min(available - fit, max(self.min_rows // 4, math.ceil(self.check_fraction * fit)))

    @classmethod
    def with_floor(cls, rows_per_column: float) -> "RowBudget":
        """The default budget with ``min_rows_per_column`` set (``rows_per_column`` raised to it)."""
        return cls(rows_per_column=max(cls.rows_per_column, rows_per_column), min_rows_per_column=rows_per_column)

    @classmethod
    def unbounded(cls) -> "RowBudget":
        """Every row fits (and none is left to check: the error is measured on the fit rows)."""
        return cls(rows_per_column=float("inf"), cost=float("inf"), check_fraction=0.0)


@dataclass(frozen=True)
class LayerShape:
    """A Conv2d/Linear layer's least-squares system: groups, columns and outputs per group."""

    groups: int
    columns: int  # inputs per receptive field and group, plus one for a bias
    outputs: int
    bias: bool

    @classmethod
    def of(cls, layer: nn.Module) -> "LayerShape":
        bias = layer.bias is not None
        if isinstance(layer, nn.Conv2d):
            g = layer.groups
            width = (layer.in_channels // g) * layer.kernel_size[0] * layer.kernel_size[1]
            return cls(g, width + int(bias), layer.out_channels // g, bias)
        return cls(1, layer.in_features + int(bias), layer.out_features, bias)


def input_rows(layer: nn.Module, x: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> None:
    """Write the layer's inputs ``x`` at ``rows`` (image * output positions + output position)
    into ``out`` (rows, groups, columns), with a trailing ones column for a bias. A conv's row is
    its receptive field, per group in (kernel row, kernel column, channel) order, gathered in one
    indexing op from the unpadded input (zeros where the field leaves it): only the rows asked
    for are unfolded."""
    shape = LayerShape.of(layer)
    width = shape.columns - int(shape.bias)
    if isinstance(layer, nn.Conv2d):
        fields = _receptive_fields(layer, x, rows)  # (rows, taps, channels)
        fields = fields.reshape(rows.shape[0], fields.shape[1], shape.groups, x.shape[1] // shape.groups).transpose(1, 2)
        out[:, :, :width] = fields.reshape(rows.shape[0], shape.groups, width)
    else:
        out[:, 0, :width] = x.reshape(-1, x.shape[-1]).index_select(0, rows)
    if shape.bias:
        out[:, :, width] = 1


def _receptive_fields(layer: nn.Conv2d, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    left, right, top, bottom = layer._reversed_padding_repeated_twice
    if layer.padding_mode != "zeros":  # reflect / replicate / circular: pad for real
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        left = right = top = bottom = 0
    height, width = x.shape[-2:]
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    image, position = rows // (out_h * out_w), rows % (out_h * out_w)
    iy = ((position // out_w) * sh - top)[:, None] + torch.arange(kh, device=rows.device) * dh  # (rows, kh)
    ix = ((position % out_w) * sw - left)[:, None] + torch.arange(kw, device=rows.device) * dw  # (rows, kw)
    inside = ((iy >= 0) & (iy < height))[:, :, None] & ((ix >= 0) & (ix < width))[:, None, :]
    iy, ix = iy.clamp(0, height - 1), ix.clamp(0, width - 1)
    # one gather; advanced indices around a slice come first -> (rows, kh, kw, channels)
    fields = x[image[:, None, None], :, iy[:, :, None], ix[:, None, :]]
    fields.mul_(inside[..., None])
    return fields.reshape(rows.shape[0], kh * kw, x.shape[1])


def weights_of(layer: nn.Module, shape: "LayerShape") -> torch.Tensor:
    """The layer's weights (and bias) in :func:`input_rows`'s column order: (groups, columns, outputs)."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):  # (out, channels, kh, kw) -> per group (out, kh, kw, channels)
        weight = weight.reshape(shape.groups, shape.outputs, *weight.shape[1:]).permute(0, 1, 3, 4, 2)
    weight = weight.reshape(shape.groups, shape.outputs, -1)
    if shape.bias:
        weight = torch.cat([weight, layer.bias.detach().reshape(shape.groups, shape.outputs, 1)], dim=2)
    return weight.transpose(1, 2).float()


def write_weights(layer: nn.Module, shape: "LayerShape", solution: torch.Tensor) -> None:
    """Write ``solution`` (:func:`weights_of`'s layout) into the layer's weight and bias."""
    width = shape.columns - int(shape.bias)
    weight = solution[:, :width, :].transpose(1, 2)  # (groups, outputs, width)
    if isinstance(layer, nn.Conv2d):
        channels, kh, kw = layer.weight.shape[1:]
        weight = weight.reshape(shape.groups, shape.outputs, kh, kw, channels).permute(0, 1, 4, 2, 3)
    layer.weight.data.copy_(weight.reshape(layer.weight.shape).to(layer.weight.dtype))
    if shape.bias:
        layer.bias.data.copy_(solution[:, width, :].reshape(-1).to(layer.bias.dtype))


def ridge_update(x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, ridge: float,
                 weight_columns: int) -> torch.Tensor | None:
    """Per group, the change D of ``weights`` minimising ``|x (W + D) - target|^2 + ridge * s * |D|^2``
    (``s``: the mean energy of the first ``weight_columns`` columns of ``x``, the weights'; a
    bias column is not counted), for x (groups, rows, columns), target (groups, rows, outputs)
    and weights (groups, columns, outputs); None when the inputs are all zero.

    Both forms give the same D; the cheaper one for the shape is used. The normal equations
    (columns x columns) cost ``rows * columns^2 / 2`` for ``x^T x`` and one product with the rows
    for ``x^T target`` (their right-hand side ``x^T target - x^T x W`` needs no residual over the
    rows); their dual (rows x rows) costs ``rows^2 * columns / 2`` and two products with the rows
    (the residual and ``x^T`` times the dual solution), so it pays only with far fewer rows than
    columns. Everything runs in the inputs' float32 (see :func:`_solve` on its precision)."""
    groups, rows, columns = x.shape
    outputs = target.shape[2]
    primal = rows * columns * columns / 2 + columns ** 3 / 6 + rows * columns * outputs
    dual = rows * rows * columns / 2 + rows ** 3 / 6 + 2 * rows * columns * outputs
    if primal <= dual:
        system = gram(x)
        scale = torch.diagonal(system, dim1=1, dim2=2)[:, :weight_columns].double().mean(dim=1)
        if not torch.all(scale > 0):
            return None
        rhs = torch.baddbmm(torch.bmm(x.transpose(1, 2), target), system, weights, alpha=-1)
        return _solve(system, rhs, ridge * scale)
    residual = target - torch.bmm(x, weights)
    dual_system = gram(x.transpose(1, 2))
    bias_energy = float(rows) * (columns - weight_columns)  # a bias column is all ones
    scale = (torch.diagonal(dual_system, dim1=1, dim2=2).double().sum(dim=1) - bias_energy) / weight_columns
    if not torch.all(scale > 0):
        return None
    return torch.bmm(x.transpose(1, 2), _solve(dual_system, residual, ridge * scale))


def gram(x: torch.Tensor, block: int = _GRAM_BLOCK) -> torch.Tensor:
    """``x^T x`` per group for x (groups, rows, columns): only the blocks on and above the
    diagonal are multiplied (``block`` columns at a time), the rest is their mirror image. About
    half the multiply-adds of the full product."""
    groups, _, columns = x.shape
    out = x.new_empty(groups, columns, columns)
    tall = x.transpose(1, 2)
    for first in range(0, columns, block):
        last = min(columns, first + block)
        strip = torch.bmm(tall[:, first:last], x[:, :, first:])  # (groups, block, columns - first)
        width = last - first
        diagonal = strip[:, :, :width].triu()  # its upper triangle, mirrored: exactly symmetric
        out[:, first:last, first:last] = diagonal + diagonal.triu(1).transpose(1, 2)
        out[:, first:last, last:] = strip[:, :, width:]
        out[:, last:, first:last] = strip[:, :, width:].transpose(1, 2)
    return out


def _solve(system: torch.Tensor, rhs: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``(system + penalty I)^-1 rhs`` per group for a float32 ``system`` (its diagonal is raised
    in place). Cholesky is backward stable, so the float32 solution is the exact one of a system
    perturbed by about 1e-7 of its largest entries, far below the ridge (1e-3 of its mean
    diagonal): the fit of a ridge a few percent off, at half the time of float64. Where float32
    cannot factor the system, float64 does; a singular one (no ridge, rank-deficient inputs)
    gets the pseudo-inverse."""
    system.diagonal(dim1=1, dim2=2).add_(penalty.to(system.dtype)[:, None])
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, factor)
    system, wide = system.double(), rhs.double()
    factor, info = torch.linalg.cholesky_ex(system)
    if not bool((info == 0).all()):
        return (torch.linalg.pinv(system, hermitian=True) @ wide).to(rhs.dtype)
    return torch.cholesky_solve(wide, factor).to(rhs.dtype)


def squared_errors(x: torch.Tensor, weights: Sequence[torch.Tensor], target: torch.Tensor) -> list[float]:
    """sum((x W - target)^2) over groups, rows and outputs, for each W (one product for all)."""
    outputs = target.shape[2]
    fitted = torch.bmm(x, torch.cat(list(weights), dim=2))
    return [float(torch.linalg.vector_norm(fitted[:, :, i * outputs:(i + 1) * outputs] - target)) ** 2
            for i in range(len(weights))]
