"""What a statistics pass collects and how it fixes its histogram edges: :class:`StatsOptions`.

One frozen value, checked when it is built, that every collection entry point takes
(:func:`~pruning.statistics.collect_activation_stats`,
:func:`~pruning.statistics.compute_histogram_edges`,
:func:`~pruning.statistics.accumulate_stats`, ``orchestrator.distributed.distributed_stats``);
:func:`pruning.criteria.statistics_options` builds the one the criteria to be scored need.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pruning.errors import InputError
from pruning.statistics.edges import EDGE_BATCHES, EDGE_QUANTILE, check_edge_options

__all__ = ["RANK_IMAGES", "StatsOptions", "check_rank_images"]

#: images whose maps are ranked by default: the mean ranks over this subsample agree closely with
#: those over every calibration image, and ranking every image costs several times more
#: (benchmarks/results/stats_cost.json)
RANK_IMAGES = 128

#: the optional statistics, each collected only when a criterion asks for it
_FLAGS = ("rank", "chip", "map_entropy", "read_inputs", "per_class")


def check_rank_images(rank_images: int | None) -> None:
    """Raise :class:`~pruning.errors.InputError` unless ``rank_images`` is a positive int or None."""
    if rank_images is not None and (
        isinstance(rank_images, bool) or not isinstance(rank_images, int) or rank_images < 1
    ):
        raise InputError(f"rank_images must be a positive integer or None (every image), got {rank_images!r}")


@dataclass(frozen=True)
class StatsOptions:
    """The options of one statistics pass (see :mod:`pruning.statistics.collection`).

    * ``bins``: histogram bins per channel; ``value``: what is histogrammed, ``"gap"`` (the
      global-average-pooled value per image) or ``"spatial"`` (every position).
    * ``rank``: sum the map ranks (HRank), over the first ``rank_images`` images of the pass
      (None: every image).
    * ``chip``, ``map_entropy``, ``read_inputs``, ``per_class``: the optional statistics
      (CHIP's channel independence, softmax map entropies, the consumers' input tensors,
      per-class sums over labelled batches).
    * ``edge_batches``, ``edge_scope`` (``"layer"`` or ``"channel"``), ``edge_quantile``: the
      histogram edges come from the first ``edge_batches`` batches, one range per output or per
      channel, between these quantiles (:mod:`pruning.statistics.edges`).

    Every field is checked when the value is built; a bad one raises
    :class:`~pruning.errors.InputError` naming it. ``options.replace(chip=True)`` is a copy with
    changes.
    """

    bins: int = 32
    value: str = "gap"
    rank: bool = True
    rank_images: int | None = RANK_IMAGES
    chip: bool = False
    map_entropy: bool = False
    read_inputs: bool = False
    per_class: bool = False
    edge_batches: int = EDGE_BATCHES
    edge_scope: str = "layer"
    edge_quantile: float = EDGE_QUANTILE

    def __post_init__(self) -> None:
        from pruning.statistics.state import check_value_mode

        check_value_mode(self.value)
        check_rank_images(self.rank_images)
        check_edge_options(self.bins, self.edge_scope, self.edge_quantile)
        if isinstance(self.edge_batches, bool) or not isinstance(self.edge_batches, int) or self.edge_batches < 1:
            raise InputError(f"edge_batches must be at least 1, got {self.edge_batches!r}")
        for name in _FLAGS:
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise InputError(f"{name} must be True or False, got {flag!r}")

    def replace(self, **changes: Any) -> StatsOptions:
        """A copy with ``changes`` (checked like a new value)."""
        return dataclasses.replace(self, **changes)
