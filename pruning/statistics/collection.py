"""The collection pass: activation statistics of prunable channels, as mergeable state.

One streaming pass over calibration batches hooks every observed output of the given
:class:`~pruning.structure.groups.ChannelGroup` s (the producer's BatchNorm output, or the producer's own
output without one, passed through ReLU when the model applies one right after; with
``read_inputs=True`` also the ``read`` tensors of residual-coupled groups, the inputs their
consumer convolutions are given) and accumulates, per observed tensor and channel:

* ``hist``: counts over a fixed-edge histogram of the global-average-pooled activation per image
  (``value="gap"``, default) or of every spatial value (``value="spatial"``), for entropy.
  The edges are fixed from the first ``edge_batches`` batches (by default one range per layer,
  its 0.1 %..99.9 % quantiles, see :mod:`pruning.statistics.edges`) before anything is binned;
  values outside fall in the end bins. :func:`collect_activation_stats` does it inside its one
  pass (the edge batches' values wait), :func:`compute_histogram_edges` as a pass of its own for
  shards that must share edges.
* ``map_entropy_sum`` (only with ``map_entropy=True``): the sum over images of the entropy of
  the softmax over each HxW map (:func:`~pruning.statistics.map_softmax_entropy`), for the
  entropy criterion's map mode (several elementwise passes over every map: a third of the pass
  without ranks, so it is gathered only when asked for).
* ``rank_sum``: the sum of the matrix rank of each HxW map (HRank) over the first ``rank_images``
  images of the pass in data order (default :data:`RANK_IMAGES`; None: every image), one batched
  ``torch.linalg.matrix_rank`` call per hook call, and ``n_rank_images``, how many were ranked.
  The ranks are most of the pass's cost, and a filter's mean map rank is stable over few images
  (HRank; ``benchmarks/stats_cost.py`` measures the agreement). Outputs of Linear layers have no
  maps: their ``rank_sum`` is ``None`` (``channel_rank`` reports NaN for them, or the rank of a 1x1
  map when asked with ``linear_as_1x1=True``).
* ``sum`` / ``gram``: the sum of the GAP vectors x and of x x^T over images (mean, correlation).
* ``zeros``: the count of exactly-zero activations over all positions (APoZ).
* ``chip_sum`` (only with ``chip=True``): the sum over images of CHIP's channel independence,
  ``||A||_* - ||A with row c zeroed||_*`` for the (C, H*W) feature matrix A of one image.
* ``n_images``, ``n_positions`` (= images x H x W; a Linear output counts as a 1x1 map).
* ``class_*`` (only with ``per_class=True``; the batches must be ``(inputs, labels)``): the images,
  GAP sums, zero counts and map ranks restricted to each label, for the class-balanced scores
  (a channel's most favourable class, ``class_scores="max"`` of the activation criteria).

Everything is a sum or a count, so shards collected by :func:`accumulate_stats` with the same
edges (and each shard's ``image_offset`` in the pass, for ``rank_images``) merge exactly
(:meth:`~pruning.statistics.ActivationStats.merge`). No feature map is
stored: memory is bounded by the per-channel accumulators (C x C for ``gram``).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from pruning.errors import InputError
from pruning.statistics.edges import EDGE_BATCHES, EDGE_QUANTILE, EDGE_SCOPES, RangeRecorder, non_finite_activations
from pruning.statistics.options import RANK_IMAGES, StatsOptions, check_rank_images
from pruning.statistics._accumulator import Accumulator, hist_values
from pruning.statistics.state import ActivationStats
from pruning.statistics.hooks import hooked, observed_outputs
from pruning.structure.groups import ChannelGroup, ObservedOutput
from pruning.utils import batch_inputs, check_finite, model_device

__all__ = [
    "EDGE_SCOPES",
    "EDGE_BATCHES",
    "EDGE_QUANTILE",
    "RANK_IMAGES",
    "StatsOptions",
    "check_rank_images",
    "batch_labels",
    "compute_histogram_edges",
    "accumulate_stats",
    "collect_activation_stats",
]

def batch_labels(batch: Any) -> torch.Tensor:
    """The class indices of an ``(inputs, labels)`` batch, checked, as a 1-D int64 tensor."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise InputError("per-class statistics need labelled batches: (inputs, labels) pairs")
    labels = torch.as_tensor(batch[1])
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(f"per-class statistics need 1-D integer class labels, got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < 0:
        raise InputError(f"class labels must be non-negative, got {int(labels.min())}")
    if labels.shape[0] != len(batch_inputs(batch)):
        raise InputError(f"{len(batch_inputs(batch))} images but {labels.shape[0]} labels in a batch")
    return labels.long()


def _run(model: nn.Module, batches: Iterable, progress: bool, desc: str,
         after_batch: Callable[[int], None] | None = None,
         before_batch: Callable[[Any], None] | None = None) -> int:
    """Forward every batch; ``before_batch(batch)`` before and ``after_batch(count)`` after each.
    Returns the number of batches."""
    device = model_device(model)
    iterable = batches
    if progress:
        from tqdm.auto import tqdm

        total = len(batches) if hasattr(batches, "__len__") else None
        iterable = tqdm(batches, desc=desc, total=total)
    count = 0
    for batch in iterable:
        if before_batch is not None:
            before_batch(batch)
        model(batch_inputs(batch).to(device))
        count += 1
        if after_batch is not None:
            after_batch(count)
    if count == 0:
        raise InputError("no calibration batches to collect statistics from")
    return count


def compute_histogram_edges(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    options: StatsOptions = StatsOptions(),
) -> dict[str, torch.Tensor]:
    """First pass: per observed output (with ``options.read_inputs``, also per tensor in the
    groups' ``read``), [C, bins+1] float32 uniform edges per channel, keyed like the statistics.

    The range is one per output (``edge_scope="layer"``, all rows equal) or one per channel
    (``"channel"``), from the ``edge_quantile`` .. 1 - ``edge_quantile`` quantiles of the
    histogrammed ``value`` over ``batches`` (0: min and max), widened on each side by 1 % of its
    width, and at least by 1e-4 x max(1, |lo|, |hi|) so that a constant output gets a proper
    (tiny) range and all its values fall in one bin (:mod:`pruning.statistics.edges`).
    ``options.edge_batches`` is not applied here: every batch given counts.
    """
    observed = observed_outputs(model, groups, options.read_inputs)
    ranges = {name: RangeRecorder(options.edge_scope, options.edge_quantile) for name in observed}

    def record(name: str, x: torch.Tensor, kind: str) -> None:
        ranges[name].update(hist_values(x, options.value))

    with hooked(model, observed, record):
        _run(model, batches, False, "edges")
    return {name: ranges[name].edges(name, options.bins) for name in observed}


def accumulate_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    edges: Mapping[str, torch.Tensor],
    options: StatsOptions = StatsOptions(),
    *,
    image_offset: int = 0,
) -> ActivationStats:
    """The mergeable pass: statistics of ``batches`` with fixed histogram ``edges`` (their bin
    count is used; ``options.bins`` and the ``edge_*`` options are not).

    Map ranks are summed over the images of the whole pass whose index (in data order) is below
    ``options.rank_images`` (None: every image); ``image_offset`` is how many images of the pass
    precede ``batches``. Running it on shards of the data with the same edges, each with its
    offset, and merging the results gives the statistics of one pass over all of it (up to float
    summation order).
    """
    if isinstance(image_offset, bool) or not isinstance(image_offset, int) or image_offset < 0:
        raise InputError(f"image_offset must be a non-negative integer, got {image_offset!r}")
    observed = observed_outputs(model, groups, options.read_inputs)
    missing = [name for name in observed if name not in edges]
    if missing:
        raise InputError(f"no histogram edges for {', '.join(missing)}")
    bins = {int(edges[name].shape[-1]) - 1 for name in observed}
    if len(bins) != 1:
        raise InputError(f"histogram edges disagree on the number of bins: {sorted(bins)}")
    options = options.replace(bins=bins.pop())
    return _Pass(observed, options, edges=edges, image_offset=image_offset).run(model, batches, progress=False)


class _Pass:
    """One forward pass collecting :class:`ActivationStats`. With ``edges``, every batch is binned
    at once; otherwise (``ranges``) the first ``options.edge_batches`` batches' histogram values
    feed ``ranges`` and wait, the edges are fixed from those ranges, and the waiting values are
    binned then: the same counts as an edge pass over those batches followed by a pass with the
    edges, without running them twice."""

    def __init__(
        self,
        observed: Mapping[str, ObservedOutput],
        options: StatsOptions,
        *,
        edges: Mapping[str, torch.Tensor] | None = None,
        ranges: Mapping[str, RangeRecorder] | None = None,
        image_offset: int = 0,
    ) -> None:
        self.observed, self.edges, self.ranges = observed, edges, ranges
        self.options = options
        self.rank_window = (options.rank_images, image_offset)
        self.accumulators: dict[str, Accumulator] = {}
        # the labels of the batch being forwarded, for the per-class sums
        self.labels: torch.Tensor | None = None

    def set_labels(self, batch: Any) -> None:
        self.labels = batch_labels(batch)

    def record(self, name: str, x: torch.Tensor, kind: str) -> None:
        if name not in self.accumulators:
            fixed = None if self.edges is None else self.edges[name]
            self.accumulators[name] = Accumulator(name, x, kind, self.options, self.rank_window, edges=fixed)
        ranges = None if self.ranges is None else self.ranges[name]
        self.accumulators[name].update(x, kind, self.options.value, ranges, self.labels)

    def fix_edges(self) -> None:
        for name in self.observed:  # a module the edge batches did not call is reported by edges()
            edges_of_name = self.ranges[name].edges(name, self.options.bins)
            if name in self.accumulators:
                self.accumulators[name].fix_edges(edges_of_name)

    def after_batch(self, count: int) -> None:
        if count == self.options.edge_batches:
            self.fix_edges()

    def run(self, model: nn.Module, batches: Iterable, progress: bool) -> ActivationStats:
        options = self.options
        with hooked(model, self.observed, self.record):
            count = _run(model, batches, progress, "activation stats",
                         self.after_batch if self.edges is None else None,
                         self.set_labels if options.per_class else None)
        if self.edges is None and count < options.edge_batches:
            self.fix_edges()
        not_called = [name for name in self.observed if name not in self.accumulators]
        if not_called:
            raise InputError(f"module(s) not called by the forward pass: {', '.join(not_called)}")
        layers = {name: self.accumulators[name].finish() for name in self.observed}
        # the edge batches were checked when the edges were fixed; a later batch shows in the sums
        overflowed = next((name for name, layer in layers.items() if not layer.is_finite()), None)
        if overflowed is not None:
            raise non_finite_activations(overflowed)
        return ActivationStats(layers, options)


def collect_activation_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    options: StatsOptions = StatsOptions(),
    *,
    progress: bool = False,
) -> ActivationStats:
    """Edges from the first ``options.edge_batches`` batches (as :func:`compute_histogram_edges`
    with ``edge_scope`` and ``edge_quantile``), statistics over all ``batches``, map ranks over the
    first ``rank_images`` images only (None: every image). The optional statistics (``chip``,
    ``map_entropy``, ``read_inputs``, ``per_class``: see the module docstring) are what the criteria
    to be scored ask for: ``pruning.criteria.statistics_options(criteria)`` builds the options.

    For ``value="gap"`` this is one forward pass: the edge batches' per-image values (C per
    image) wait until the edges are fixed. For ``value="spatial"`` the edge batches are run
    twice, once for the edges and once in the main pass, because keeping every position of
    their outputs would hold whole activation maps in memory. Either way the result equals
    :func:`compute_histogram_edges` followed by :func:`accumulate_stats`.

    ``batches`` may be a list, a re-iterable loader or a one-shot iterator (for ``"spatial"``
    its first batches are kept in memory for the second pass). A model with a NaN or infinite
    weight is refused before the pass (one line naming it).
    """
    check_finite(model, "the model")
    observed = observed_outputs(model, groups, options.read_inputs)
    if options.value == "gap":
        ranges = {name: RangeRecorder(options.edge_scope, options.edge_quantile) for name in observed}
        return _Pass(observed, options, ranges=ranges).run(model, batches, progress)
    if isinstance(batches, Iterator):  # one-shot: keep the edge batches for the main pass
        head = list(itertools.islice(batches, options.edge_batches))
        edges = compute_histogram_edges(model, groups, head, options)
        batches = itertools.chain(head, batches)
    else:
        edges = compute_histogram_edges(model, groups, itertools.islice(batches, options.edge_batches), options)
    return _Pass(observed, options, edges=edges).run(model, batches, progress)
