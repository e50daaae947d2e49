"""The mergeable state of activation statistics: :class:`LayerStats` per observed output,
:class:`ActivationStats` over a model's groups, with exact merging, files and per-channel reads.

Every field is a sum or a count, so the state of two shards merges exactly into the state of one
pass over both (:meth:`ActivationStats.merge`), which lets workers collect shards in parallel.
The fields are described on :class:`LayerStats`; :mod:`pruning.statistics.collection` fills them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from pruning.errors import InputError
from pruning.statistics.measures import histogram_entropy
from pruning.structure.groups import SOURCES, ChannelGroup
from pruning.utils import atomic_write

__all__ = [
    "LayerStats",
    "ActivationStats",
    "StatsFileError",
    "VALUE_MODES",
    "merge_stats",
    "stats_from_context",
]

VALUE_MODES = ("gap", "spatial")
FORMAT = "prunesweep-activation-stats"
VERSION = 1


class StatsFileError(InputError):
    """A statistics file that cannot be read back (corrupt, truncated or not ours)."""


def check_value_mode(value: str) -> None:
    """Raise :class:`~pruning.errors.InputError` unless ``value`` is one of :data:`VALUE_MODES`."""
    if value not in VALUE_MODES:
        raise InputError(f"unknown histogram value {value!r}; valid: {', '.join(VALUE_MODES)}")


@dataclass
class LayerStats:
    """Accumulated statistics of one observed output with C channels (all tensors, on CPU).

    edges: [C, bins+1] float32 histogram edges (fixed before accumulation).
    hist: [C, bins] int64 counts of the histogrammed value (GAP per image, or every position).
    sum: [C] float64 sum over images of the GAP activation.
    gram: [C, C] float64 sum over images of x x^T, x the GAP vector of one image.
    zeros: [C] int64 count of exactly-zero activations over all images and positions.
    n_images: [] int64 number of images.
    n_positions: [] int64 images x H x W (a Linear output is one position per image).
    map_size: [2] int64 (H, W) of the maps; (0, 0) for outputs without maps (Linear).
    rank_sum: [C] float64 sum of the HxW map ranks over the first ``n_rank_images`` images of
        the pass; None when not collected or when the output has no maps.
    chip_sum: [C] float64 sum over images of CHIP channel independence; None when not collected.
    map_entropy_sum: [C] float64 sum over images of the entropy of the softmax over each HxW map
        (:func:`~pruning.statistics.map_softmax_entropy`); None when not collected.
    n_rank_images: [] int64 number of images whose maps were ranked (``rank_images`` of the
        collection); None exactly when ``rank_sum`` is. Files written before it existed ranked
        every image: a ``rank_sum`` given without it gets ``n_images``.
    """

    edges: torch.Tensor
    hist: torch.Tensor
    sum: torch.Tensor
    gram: torch.Tensor
    zeros: torch.Tensor
    n_images: torch.Tensor
    n_positions: torch.Tensor
    map_size: torch.Tensor
    rank_sum: torch.Tensor | None = None
    chip_sum: torch.Tensor | None = None
    map_entropy_sum: torch.Tensor | None = None
    n_rank_images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rank_sum is not None and self.n_rank_images is None:
            self.n_rank_images = self.n_images.clone()

    @property
    def channels(self) -> int:
        return int(self.edges.shape[0])

    @property
    def bins(self) -> int:
        return int(self.edges.shape[1]) - 1

    @property
    def has_maps(self) -> bool:
        return bool(self.map_size.prod() > 0)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-None fields by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


_REQUIRED_FIELDS = tuple(f.name for f in dataclasses.fields(LayerStats) if f.default is dataclasses.MISSING)
_OPTIONAL_FIELDS = tuple(f.name for f in dataclasses.fields(LayerStats) if f.default is not dataclasses.MISSING)
#: fields that must be identical for two states to merge (the rest are summed)
_FIXED_FIELDS = ("edges", "map_size")


def _ranked_images(s: LayerStats) -> torch.Tensor:
    """``s.n_rank_images``, refused when 0 (a shard past ``rank_images``, read on its own)."""
    if int(s.n_rank_images) == 0:
        raise InputError("no image's maps were ranked in these statistics (a shard past rank_images?); "
                         "merge it with the shard holding the first images")
    return s.n_rank_images


class ActivationStats:
    """Per observed output :class:`LayerStats`, plus the configuration they were collected with.

    ``layers``: {observation key: LayerStats} (:attr:`ObservedOutput.key`: the module name for
    an output, ``"<module>:input"`` for a consumer's input). ``bins``, ``value`` ("gap" or
    "spatial"), ``rank``, ``chip``, ``map_entropy`` and ``read_inputs`` (which optional statistics
    were collected).

    The ``channel_*`` accessors take a :class:`~pruning.structure.groups.ChannelGroup` and return a
    float64 CPU tensor of ``group.size`` values, the mean over the group's observations of
    ``source`` (:meth:`~pruning.structure.groups.ChannelGroup.observations`): ``"producer"``,
    the producers' outputs (several for residual-coupled groups), or ``"consumer"``, the
    tensors the consumers read (needs ``read_inputs``).
    """

    def __init__(
        self,
        layers: Mapping[str, LayerStats],
        *,
        bins: int,
        value: str = "gap",
        rank: bool = True,
        chip: bool = False,
        map_entropy: bool = False,
        read_inputs: bool = False,
    ) -> None:
        check_value_mode(value)
        self.layers = dict(layers)
        self.bins = int(bins)
        self.value = value
        self.rank = bool(rank)
        self.chip = bool(chip)
        self.map_entropy = bool(map_entropy)
        self.read_inputs = bool(read_inputs)

    @property
    def config(self) -> dict[str, Any]:
        return {"bins": self.bins, "value": self.value, "rank": self.rank, "chip": self.chip,
                "map_entropy": self.map_entropy, "read_inputs": self.read_inputs}

    def __repr__(self) -> str:
        images = {int(s.n_images) for s in self.layers.values()}
        return f"ActivationStats({len(self.layers)} outputs, images={sorted(images)}, {self.config})"

    # -- merging -----------------------------------------------------------------------------

    def merge(self, other: ActivationStats) -> ActivationStats:
        """The state of one pass over both shards of data. Needs equal config, layers and edges."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"cannot merge ActivationStats with {type(other).__name__}")
        if self.config != other.config:
            raise InputError(f"cannot merge statistics collected differently: {self.config} vs {other.config}")
        if self.layers.keys() != other.layers.keys():
            diff = sorted(self.layers.keys() ^ other.layers.keys())
            raise InputError(f"cannot merge statistics of different layers: {', '.join(diff)}")
        merged = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            fields = {}
            for f in dataclasses.fields(LayerStats):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if (x is None) != (y is None):
                    raise InputError(f"layer {name!r}: {f.name} collected in only one of the states")
                if x is None:
                    fields[f.name] = None
                elif f.name in _FIXED_FIELDS:
                    if x.shape != y.shape or not torch.equal(x, y):
                        what = "histogram edges" if f.name == "edges" else "map sizes"
                        raise InputError(f"layer {name!r}: cannot merge statistics with different {what}")
                    fields[f.name] = x.clone()
                else:
                    if x.shape != y.shape:
                        raise InputError(f"layer {name!r}: {f.name} shapes differ")
                    fields[f.name] = x + y
            merged[name] = LayerStats(**fields)
        return ActivationStats(merged, **self.config)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (:func:`~pruning.utils.atomic_write`), readable with weights_only loading."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "config": json.loads(json.dumps(self.config)),
            "layers": {name: s.tensors() for name, s in self.layers.items()},
        }

        def write(tmp: Path) -> None:
            torch.save(payload, tmp)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        """Read a file written by :meth:`save`; anything else raises :class:`StatsFileError`."""
        path = os.fspath(path)

        def fail(reason: str) -> StatsFileError:
            return StatsFileError(f"{path}: not a readable prunesweep activation-stats file ({reason})")

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises many types for corrupt or foreign files
            first_line = (str(exc).strip().splitlines() or [""])[0][:120]
            raise fail(f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise fail("unknown content")
        if payload.get("version") != VERSION:
            raise fail(f"version {payload.get('version')!r}, expected {VERSION}")
        try:
            config = payload["config"]
            layers = {}
            for name, tensors in payload["layers"].items():
                unknown = set(tensors) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS)
                if unknown or not set(_REQUIRED_FIELDS) <= set(tensors):
                    raise ValueError(f"layer {name!r} has fields {sorted(tensors)}")
                if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
                    raise ValueError(f"layer {name!r} holds a non-tensor")
                layers[name] = LayerStats(**tensors)
            # files written before these options existed: map entropies where every layer has them
            # (they were always collected then), the producers' outputs only
            map_entropy = config.get("map_entropy", all(s.map_entropy_sum is not None for s in layers.values()))
            return cls(layers, bins=config["bins"], value=config["value"], rank=config["rank"], chip=config["chip"],
                       map_entropy=map_entropy, read_inputs=config.get("read_inputs", False))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fail(f"malformed: {exc}") from None

    # -- accessors -----------------------------------------------------------------------------

    def layer_stats(self, group: ChannelGroup, source: str = "producer") -> list[LayerStats]:
        """The statistics of each of the group's observations of ``source``."""
        if source not in SOURCES:
            raise InputError(f"unknown statistics source {source!r}; valid: {', '.join(SOURCES)}")
        if source == "consumer" and group.read and not self.read_inputs:
            raise InputError(
                "the tensors the consumers read were not collected; collect the statistics with "
                "read_inputs=True (prunesweep stats --read-inputs)"
            )
        out = []
        for obs in group.observations(source):
            stats = self.layers.get(obs.key)
            if stats is None:
                raise InputError(
                    f"no statistics for {obs.key!r} (group {group.name!r}); "
                    "were they collected on this model and these groups?"
                )
            if stats.channels != group.size:
                raise InputError(
                    f"statistics of {obs.key!r} have {stats.channels} channels, group {group.name!r} has {group.size}"
                )
            if int(stats.n_images) == 0:
                raise InputError(f"statistics of {obs.key!r} cover no images")
            out.append(stats)
        return out

    def _mean(self, group: ChannelGroup, fn: Callable[[LayerStats], torch.Tensor], source: str) -> torch.Tensor:
        return torch.stack([fn(s).to(torch.float64) for s in self.layer_stats(group, source)]).mean(0)

    def channel_entropy(self, group: ChannelGroup, *, estimator: str = "plugin", source: str = "producer") -> torch.Tensor:
        """Entropy (nats) of each channel's histogram, H_c = -sum_k p_k log p_k with the plug-in
        ``estimator``, or with the Miller-Madow correction (:func:`~pruning.statistics.histogram_entropy`)."""
        return self._mean(group, lambda s: histogram_entropy(s.hist, estimator=estimator), source)

    def channel_map_entropy(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """Mean over images of the entropy of the softmax over each HxW map (0 for Linear outputs)."""

        def mean(s: LayerStats) -> torch.Tensor:
            if s.map_entropy_sum is None:
                raise InputError(
                    "map entropies were not collected; collect the statistics with map_entropy=True "
                    "(prunesweep stats --map-entropy)"
                )
            return s.map_entropy_sum / s.n_images

        return self._mean(group, mean, source)

    def channel_rank(self, group: ChannelGroup, *, linear_as_1x1: bool = False, source: str = "producer") -> torch.Tensor:
        """Mean rank of the HxW maps per ranked image (the first ``n_rank_images`` of the pass).

        Outputs without maps (Linear layers) give NaN, or with ``linear_as_1x1`` the mean rank
        of their values taken as 1x1 maps (1 where non-zero): the fraction of non-zero values.
        """
        if not self.rank:
            raise InputError("map ranks were not collected; collect the statistics with rank=True")

        def rank(s: LayerStats) -> torch.Tensor:
            if s.rank_sum is not None:
                return s.rank_sum / _ranked_images(s)
            if linear_as_1x1:
                return 1.0 - s.zeros.double() / s.n_positions
            return torch.full((s.channels,), math.nan, dtype=torch.float64)

        return self._mean(group, rank, source)

    def channel_relative_rank(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """Mean map rank divided by min(H, W), in [0, 1]; Linear outputs count as 1x1 maps."""
        if not self.rank:
            raise InputError("map ranks were not collected; collect the statistics with rank=True")

        def relative(s: LayerStats) -> torch.Tensor:
            if s.rank_sum is not None:
                return s.rank_sum / _ranked_images(s) / int(s.map_size.min())
            return 1.0 - s.zeros.double() / s.n_positions

        return self._mean(group, relative, source)

    def channel_mean(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """Mean over images of the global-average-pooled activation."""
        return self._mean(group, lambda s: s.sum / s.n_images, source)

    def channel_apoz(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """Average percentage of zeros: the fraction of exactly-zero values over all positions."""
        return self._mean(group, lambda s: s.zeros.double() / s.n_positions, source)

    def channel_chip(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """CHIP channel independence, mean over images: ||A||_* - ||A with row c zeroed||_*."""
        if not self.chip:
            raise InputError(
                "CHIP statistics were not collected; collect them with "
                "collect_activation_stats(..., chip=True)"
            )
        return self._mean(group, lambda s: s.chip_sum / s.n_images, source)


def merge_stats(a: ActivationStats, b: ActivationStats) -> ActivationStats:
    """``a.merge(b)``."""
    return a.merge(b)


def stats_from_context(criterion: Any, context: Any) -> ActivationStats:
    """The :class:`ActivationStats` of a :class:`~pruning.criteria._base.ScoringContext`, checked."""
    criterion.check_context(context)
    stats = context.stats
    if not isinstance(stats, ActivationStats):
        raise InputError(
            f"criterion {criterion.name!r} needs pruning.statistics.ActivationStats in context.stats, "
            f"got {type(stats).__name__}"
        )
    return stats
