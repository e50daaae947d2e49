"""The running sums of one observed tensor in the collection pass
(:mod:`pruning.statistics.collection`, whose docstring says what each sum is)."""
from __future__ import annotations

import torch

from pruning.errors import InputError
from pruning.statistics.edges import RangeRecorder
from pruning.statistics.measures import (
    RANK_MAP_SIDE,
    RANK_MAPS,
    batched_map_rank,
    count_zeros,
    leave_one_out_nuclear_norms,
    map_softmax_entropy,
    rank_subsample,
)
from pruning.statistics.layer import CLASS_FIELDS, LayerStats, pad_classes
from pruning.statistics.options import StatsOptions


def hist_values(x: torch.Tensor, value: str) -> torch.Tensor:
    """(C, n) values to histogram: GAP per image or all positions."""
    if value == "gap":
        return x.mean((2, 3)).T
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def rank_quota(channels: int, rank_images: int | None, image_offset: int) -> int | None:
    """How many images of a shard starting at ``image_offset`` an output with ``channels``
    channels ranks: those below ``rank_images`` and below :data:`RANK_MAPS` / ``channels`` (at least
    one) in the pass; None (every image) when ``rank_images`` is None."""
    if rank_images is None:
        return None
    return max(0, min(rank_images, max(1, RANK_MAPS // channels)) - image_offset)


class Accumulator:
    """Running sums of one observed output, on the activation's device."""

    def __init__(self, name: str, x: torch.Tensor, kind: str, options: StatsOptions,
                 rank_window: tuple[int | None, int], edges: torch.Tensor | None = None):
        """``options``: which optional sums to keep (``rank``, ``chip``, ``map_entropy``,
        ``per_class``); ``rank_window``: (``rank_images``, ``image_offset``) of the pass
        (:func:`~pruning.statistics.accumulate_stats`)."""
        rank, chip, map_entropy, per_class = options.rank, options.chip, options.map_entropy, options.per_class
        _, c, h, w = x.shape
        dev = x.device
        self.name = name
        # histogram values seen before the edges are fixed (single-pass collection), binned then
        self.pending: list[torch.Tensor] = []
        self.edges: torch.Tensor | None = None
        self.sum = torch.zeros(c, dtype=torch.float64, device=dev)
        self.gram = torch.zeros(c, c, dtype=torch.float64, device=dev)
        self.zeros = torch.zeros(c, dtype=torch.int64, device=dev)
        self.n_images = 0
        self.n_positions = 0
        self.kind = kind  # pruning.statistics.hooks.MAP_KINDS
        self.map_size = (0, 0) if kind == "vector" else (h, w)
        self.rank_sum = torch.zeros(c, dtype=torch.float64, device=dev) if rank and kind == "maps" else None
        # how many of this shard's images are to be ranked (None: all of them)
        self.rank_quota = rank_quota(c, *rank_window)
        self.n_rank_images = 0
        self.chip_sum = torch.zeros(c, dtype=torch.float64, device=dev) if chip else None
        self.map_entropy_sum = torch.zeros(c, dtype=torch.float64, device=dev) if map_entropy else None
        # per-class sums: rows for labels 0..K-1, grown as larger labels arrive
        self.per_class = per_class
        self.class_images = torch.zeros(0, dtype=torch.int64, device=dev)
        self.class_sum = torch.zeros(0, c, dtype=torch.float64, device=dev)
        self.class_zeros = torch.zeros(0, c, dtype=torch.int64, device=dev)
        self.class_rank_sum = torch.zeros(0, c, dtype=torch.float64, device=dev)
        self.class_rank_images = torch.zeros(0, dtype=torch.int64, device=dev)
        if edges is not None:
            self.fix_edges(edges)

    def fix_edges(self, edges: torch.Tensor) -> None:
        """Fix the histogram edges and bin the values that were waiting for them."""
        c = self.sum.shape[0]
        if edges.dim() != 2 or edges.shape[0] != c or edges.shape[1] < 3:
            raise InputError(f"module {self.name!r}: edges of shape {tuple(edges.shape)} do not fit {c} channels")
        dev = self.sum.device
        self.edges = edges.to(device=dev, dtype=torch.float32)
        self.inner = self.edges[:, 1:-1].contiguous()
        self.bins = self.edges.shape[1] - 1
        self.offsets = torch.arange(c, device=dev)[:, None] * self.bins
        self.hist = torch.zeros(c * self.bins, dtype=torch.int64, device=dev)
        for values in self.pending:
            self._bin(values)
        self.pending = []

    def _bin(self, values: torch.Tensor) -> None:
        idx = torch.searchsorted(self.inner, values.contiguous(), right=True)
        self.hist += torch.bincount((idx + self.offsets).flatten(), minlength=self.hist.numel())

    def _grow_classes(self, classes: int) -> None:
        for name in CLASS_FIELDS:
            if getattr(self, name).shape[0] < classes:
                setattr(self, name, pad_classes(getattr(self, name), classes))

    def update(self, x: torch.Tensor, kind: str, value: str, recorder: RangeRecorder | None = None,
               labels: torch.Tensor | None = None) -> None:
        """Add a batch; before the edges are fixed its histogram values go to ``recorder`` and wait.
        ``labels`` (the batch's class indices) are required with ``per_class``."""
        b, c, h, w = x.shape
        if kind != self.kind or (kind != "vector" and (h, w) != self.map_size):
            raise InputError(f"module {self.name!r}: output shape changed between batches; use one input size")
        gap = x.mean((2, 3))
        values = gap.T if value == "gap" else hist_values(x, value)
        if self.edges is not None:
            self._bin(values)
        else:
            recorder.update(values)
            self.pending.append(values)
        gap = gap.double()
        self.sum += gap.sum(0)
        self.gram += gap.T @ gap
        if not self.per_class:
            self.zeros += count_zeros(x, (0, 2, 3))
        else:  # per image first, for the per-class counts
            zeros = count_zeros(x, (2, 3))
            self.zeros += zeros.sum(0)
            labels = labels.to(x.device)
            self._grow_classes(int(labels.max()) + 1)
            self.class_images += torch.bincount(labels, minlength=self.class_images.shape[0])
            self.class_sum.index_add_(0, labels, gap)
            self.class_zeros.index_add_(0, labels, zeros.long())
        if self.map_entropy_sum is not None:
            self.map_entropy_sum += map_softmax_entropy(x).double().sum(0)
        self.n_images += b
        self.n_positions += b * h * w
        if self.rank_sum is not None:
            k = b if self.rank_quota is None else min(b, self.rank_quota - self.n_rank_images)
            if k > 0:
                ranks = batched_map_rank(rank_subsample(x[:k], RANK_MAP_SIDE)).double()
                self.rank_sum += ranks.sum(0)
                self.n_rank_images += k
                if self.per_class:
                    self.class_rank_sum.index_add_(0, labels[:k], ranks)
                    self.class_rank_images += torch.bincount(labels[:k], minlength=self.class_rank_images.shape[0])
        if self.chip_sum is not None:
            full, without = leave_one_out_nuclear_norms(x.reshape(b, c, h * w))
            self.chip_sum += (full[:, None] - without).sum(0)

    def finish(self) -> LayerStats:
        c = self.sum.shape[0]
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        return LayerStats(
            edges=cpu(self.edges),
            hist=cpu(self.hist.view(c, self.bins)),
            sum=cpu(self.sum),
            gram=cpu(self.gram),
            zeros=cpu(self.zeros),
            n_images=torch.tensor(self.n_images, dtype=torch.int64),
            n_positions=torch.tensor(self.n_positions, dtype=torch.int64),
            map_size=torch.tensor(self.map_size, dtype=torch.int64),
            rank_sum=cpu(self.rank_sum),
            n_rank_images=None if self.rank_sum is None else torch.tensor(self.n_rank_images, dtype=torch.int64),
            chip_sum=cpu(self.chip_sum),
            map_entropy_sum=cpu(self.map_entropy_sum),
            **(self._class_fields() if self.per_class else {}),
        )

    def _class_fields(self) -> dict[str, torch.Tensor]:
        fields = {"class_images": self.class_images.cpu(), "class_sum": self.class_sum.cpu(),
                  "class_zeros": self.class_zeros.cpu()}
        if self.rank_sum is not None:
            fields.update(class_rank_sum=self.class_rank_sum.cpu(), class_rank_images=self.class_rank_images.cpu())
        return fields
