"""The histogram edges of the entropy statistics: from which range, shared by whom.

:func:`~pruning.statistics.compute_histogram_edges` runs the first batches through the model and
feeds each observed output's histogrammed values (``(C, n)``, one row per channel) to a
:class:`RangeRecorder`; :meth:`RangeRecorder.edges` then gives that output's [C, bins+1] edges:

* ``edge_scope="layer"`` (default): ONE range for all channels of the output, so a channel's
  entropy depends on its scale: a nearly dead channel with a little jitter fills one or two bins
  of the layer's range and scores low, a strong one spreads over many. ``"channel"``: a range
  per channel (each channel's entropy is then invariant to its own scale and shift).
* ``edge_quantile`` q: the range is [quantile q, quantile 1-q] of the values seen, so that a few
  outliers do not stretch it (values outside fall in the end bins); q = 0 is [min, max].
  The quantiles are taken over at most :data:`SAMPLE_PER_BATCH` values per channel and batch
  (a seeded random subset), which bounds the memory of ``value="spatial"``.

Either way the range is widened on each side by :data:`EDGE_MARGIN` of its width, and by at
least 1e-4 x max(1, |lo|, |hi|) so that a constant output gets a tiny range and all its values
land in one bin. The edges are fixed before the accumulating pass, so shards merge exactly.
"""
from __future__ import annotations

import math

import torch

from pruning.errors import InputError

__all__ = ["EDGE_SCOPES", "EDGE_BATCHES", "EDGE_QUANTILE", "EDGE_MARGIN", "check_edge_options", "RangeRecorder", "non_finite_activations"]

EDGE_SCOPES = ("layer", "channel")
#: batches the edges are computed from by default (the rest only fill the histograms)
EDGE_BATCHES = 4
#: default lower quantile of the edge range (the upper one is 1 - EDGE_QUANTILE)
EDGE_QUANTILE = 0.001
#: relative widening of the range on each side
EDGE_MARGIN = 0.01
#: values per channel and batch kept for the quantiles
SAMPLE_PER_BATCH = 4096


def check_edge_options(bins: int, edge_scope: str, edge_quantile: float) -> None:
    """One-line :class:`~pruning.errors.InputError` for a bad bin count, scope or quantile."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise InputError(f"bins must be at least 2 (an integer), got {bins!r}")
    if edge_scope not in EDGE_SCOPES:
        raise InputError(f"unknown edge_scope {edge_scope!r}; valid: {', '.join(EDGE_SCOPES)}")
    if isinstance(edge_quantile, bool) or not isinstance(edge_quantile, (int, float)) or not 0 <= edge_quantile < 0.5:
        raise InputError(f"edge_quantile must be in [0, 0.5), got {edge_quantile!r}")


def _quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Per-row quantiles with linear interpolation (as ``torch.quantile``, without its size
    limit), all from one sort."""
    ordered = values.sort(-1).values
    out = []
    for q in qs:
        pos = q * (ordered.shape[-1] - 1)
        i = math.floor(pos)
        j = min(i + 1, ordered.shape[-1] - 1)
        out.append(ordered[:, i] + (ordered[:, j] - ordered[:, i]) * (pos - i))
    return out



def non_finite_activations(name: str) -> InputError:
    """The one-line error for a NaN or infinite activation of module ``name`` (the model's weights
    were checked finite before the pass, so its numbers overflow or the images hold one)."""
    return InputError(f"module {name!r} produced non-finite activations (NaN or inf) on the calibration images; "
                      f"the weights are finite, so check the images (NaN, normalisation) or the model's numerics")

class RangeRecorder:
    """The running range of one observed output's histogrammed values."""

    def __init__(self, edge_scope: str, edge_quantile: float) -> None:
        self.scope = edge_scope
        self.quantile = float(edge_quantile)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        # one generator per output: its subsets depend only on the batches, not on hook order
        self.generator = torch.Generator().manual_seed(0)

    def update(self, values: torch.Tensor) -> None:
        """Add a (C, n) batch of values."""
        vmin, vmax = values.min(1).values, values.max(1).values
        self.lo = vmin if self.lo is None else torch.minimum(self.lo, vmin)
        self.hi = vmax if self.hi is None else torch.maximum(self.hi, vmax)
        if self.quantile > 0:
            n = values.shape[1]
            if n > SAMPLE_PER_BATCH:
                keep = torch.randperm(n, generator=self.generator)[:SAMPLE_PER_BATCH].to(values.device)
                values = values[:, keep]
            self.samples.append(values.detach().double().cpu())

    def edges(self, name: str, bins: int) -> torch.Tensor:
        """[C, bins+1] float32 uniform edges (identical rows for the layer scope)."""
        if self.lo is None:
            raise InputError(f"module {name!r} was not called by the forward pass")
        lo, hi = self.lo.double().cpu(), self.hi.double().cpu()
        # min/max see every value, so they also catch a NaN or inf the subsample missed
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise non_finite_activations(name)
        channels = lo.shape[0]
        if self.quantile > 0:
            values = torch.cat(self.samples, 1)
            if self.scope == "layer":
                values = values.reshape(1, -1)
            lo, hi = _quantiles(values, (self.quantile, 1 - self.quantile))
        elif self.scope == "layer":
            lo, hi = lo.min()[None], hi.max()[None]
        lo, hi = lo.expand(channels), hi.expand(channels)
        scale = torch.maximum(torch.maximum(lo.abs(), hi.abs()), torch.ones_like(lo))
        pad = torch.maximum(EDGE_MARGIN * (hi - lo), 1e-4 * scale)
        steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        return ((lo - pad)[:, None] + (hi - lo + 2 * pad)[:, None] * steps).float()
