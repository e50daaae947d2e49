"""The mergeable state of activation statistics: :class:`LayerStats` per observed output,
:class:`ActivationStats` over a model's groups, with exact merging, files and per-channel reads.

Every field is a sum or a count, so the state of two shards merges exactly into the state of one
pass over both (:meth:`ActivationStats.merge`), which lets workers collect shards in parallel.
The fields are described on :class:`LayerStats`; :mod:`pruning.statistics.collection` fills them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from pruning.class_scores import check_class_scores
from pruning.errors import InputError
from pruning.statistics.layer import OPTIONAL_FIELDS, REQUIRED_FIELDS, LayerStats, class_rows, merge_layer
from pruning.statistics.measures import histogram_entropy, ranked_side
from pruning.statistics.options import StatsOptions
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
    "spatial"), ``rank``, ``chip``, ``map_entropy``, ``read_inputs`` and ``per_class`` (which
    optional statistics were collected).

    The ``channel_*`` accessors take a :class:`~pruning.structure.groups.ChannelGroup` and return a
    float64 CPU tensor of ``group.size`` values, the mean over the group's observations of
    ``source`` (:meth:`~pruning.structure.groups.ChannelGroup.observations`): ``"producer"``,
    the producers' outputs (several for residual-coupled groups), or ``"consumer"``, the
    tensors the consumers read (needs ``read_inputs``). Those with ``class_scores``
    (:data:`~pruning.class_scores.CLASS_SCORES`) give, with ``"max"``, each channel's most
    favourable class instead of the pooled value: the statistic per class (averaged over the
    observations), then its maximum over the classes that had images (needs ``per_class``).
    """

    def __init__(self, layers: Mapping[str, LayerStats], options: StatsOptions) -> None:
        self.layers = dict(layers)
        self.bins = options.bins
        self.value = options.value
        self.rank = options.rank
        self.chip = options.chip
        self.map_entropy = options.map_entropy
        self.read_inputs = options.read_inputs
        self.per_class = options.per_class

    @property
    def config(self) -> dict[str, Any]:
        return {"bins": self.bins, "value": self.value, "rank": self.rank, "chip": self.chip,
                "map_entropy": self.map_entropy, "read_inputs": self.read_inputs, "per_class": self.per_class}

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
        merged = {name: merge_layer(name, a, other.layers[name]) for name, a in self.layers.items()}
        return ActivationStats(merged, StatsOptions(**self.config))

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
                unknown = set(tensors) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
                if unknown or not set(REQUIRED_FIELDS) <= set(tensors):
                    raise ValueError(f"layer {name!r} has fields {sorted(tensors)}")
                if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
                    raise ValueError(f"layer {name!r} holds a non-tensor")
                layers[name] = LayerStats(**tensors)
                if not layers[name].is_finite():
                    raise ValueError(f"layer {name!r} holds non-finite values (NaN or inf)")
            # files written before these options existed: map entropies where every layer has them
            # (they were always collected then), the producers' outputs only
            map_entropy = config.get("map_entropy", all(s.map_entropy_sum is not None for s in layers.values()))
            options = StatsOptions(bins=config["bins"], value=config["value"], rank=config["rank"],
                                   chip=config["chip"], map_entropy=map_entropy,
                                   read_inputs=config.get("read_inputs", False),
                                   per_class=config.get("per_class", False))
            return cls(layers, options)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fail(f"malformed: {exc}") from None

    def check_holds(self, required: Iterable[str], *, groups: Sequence[ChannelGroup] | None = None,
                    what: str = "the statistics") -> None:
        """Raise a one-line :class:`InputError` naming the optional statistics in ``required``
        (:meth:`~pruning.criteria.Criterion.required_statistics` names) that were not collected,
        with the ``prunesweep stats`` flag of each (``chip`` -> ``--chip``). Given the ``groups``
        to be scored, ``read_inputs`` is only required where one of them has consumer tensors of
        its own (a residual-coupled group); elsewhere the consumers read the producers' outputs."""
        required = set(required)
        if groups is not None and not any(g.read for g in groups):
            required.discard("read_inputs")
        missing = sorted(name for name in required if not self.config.get(name, False))
        if missing:
            flags = " ".join("--" + name.replace("_", "-") for name in missing)
            raise InputError(f"{what} were collected without {', '.join(missing)}: "
                             f"collect them with `prunesweep stats {flags}`")

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

    def _per_class(self, group: ChannelGroup, fn: Callable[[LayerStats], torch.Tensor], source: str) -> torch.Tensor:
        """[K', C]: ``fn`` (per class) averaged over the group's observations."""
        if not self.per_class:
            raise InputError(
                "per-class statistics were not collected; collect the statistics with per_class=True "
                "(prunesweep stats --per-class)"
            )
        return self._mean(group, fn, source)

    def _pooled_or_best(self, group: ChannelGroup, source: str, class_scores: str,
                        pooled: Callable[[LayerStats], torch.Tensor],
                        per_class: Callable[[LayerStats], torch.Tensor], best: str = "max") -> torch.Tensor:
        """``pooled`` averaged over the observations, or with ``class_scores="max"`` the ``best``
        ("max" or "min") over classes of ``per_class``."""
        check_class_scores(class_scores)
        if class_scores == "pooled":
            return self._mean(group, pooled, source)
        rows = self._per_class(group, per_class, source)
        return rows.amax(0) if best == "max" else rows.amin(0)

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

    def channel_rank(self, group: ChannelGroup, *, linear_as_1x1: bool = False, source: str = "producer",
                     class_scores: str = "pooled") -> torch.Tensor:
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

        def class_rank(s: LayerStats) -> torch.Tensor:
            if s.class_rank_sum is not None:
                return class_rows(s.class_rank_sum, s.class_rank_images)
            if linear_as_1x1:
                return 1.0 - class_rows(s.class_zeros, s.class_images)
            return torch.full((int((s.class_images > 0).sum()), s.channels), math.nan, dtype=torch.float64)

        return self._pooled_or_best(group, source, class_scores, rank, class_rank)

    def channel_relative_rank(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """Mean map rank divided by the largest rank a map can have, the shorter side of the grid it
        is ranked on (:func:`~pruning.statistics.rank_subsample`), in [0, 1]; Linear outputs count
        as 1x1 maps."""
        if not self.rank:
            raise InputError("map ranks were not collected; collect the statistics with rank=True")

        def relative(s: LayerStats) -> torch.Tensor:
            if s.rank_sum is not None:
                return s.rank_sum / _ranked_images(s) / min(ranked_side(int(side)) for side in s.map_size)
            return 1.0 - s.zeros.double() / s.n_positions

        return self._mean(group, relative, source)

    def channel_mean(self, group: ChannelGroup, *, source: str = "producer", class_scores: str = "pooled") -> torch.Tensor:
        """Mean over images of the global-average-pooled activation (``"max"``: over the images
        of the class where it is largest)."""
        return self._pooled_or_best(group, source, class_scores, lambda s: s.sum / s.n_images,
                                    lambda s: class_rows(s.class_sum, s.class_images))

    def channel_apoz(self, group: ChannelGroup, *, source: str = "producer", class_scores: str = "pooled") -> torch.Tensor:
        """Average percentage of zeros: the fraction of exactly-zero values over all positions
        (``"max"``: over the images of the class where the channel is least often zero, so the
        smallest per-class fraction)."""
        def per_class(s: LayerStats) -> torch.Tensor:
            return class_rows(s.class_zeros, s.class_images) / max(1, int(s.map_size.prod()))

        return self._pooled_or_best(group, source, class_scores, lambda s: s.zeros.double() / s.n_positions,
                                    per_class, best="min")

    def channel_chip(self, group: ChannelGroup, *, source: str = "producer") -> torch.Tensor:
        """CHIP channel independence, mean over images: ||A||_* - ||A with row c zeroed||_*."""
        if not self.chip:
            raise InputError(
                "CHIP statistics were not collected; collect them with "
                "collect_activation_stats(..., StatsOptions(chip=True))"
            )
        return self._mean(group, lambda s: s.chip_sum / s.n_images, source)


def merge_stats(a: ActivationStats, b: ActivationStats) -> ActivationStats:
    """``a.merge(b)``."""
    return a.merge(b)


def stats_from_context(criterion: Any, context: Any, groups: Sequence[ChannelGroup]) -> ActivationStats:
    """The :class:`ActivationStats` of a :class:`~pruning.criteria._base.ScoringContext`, checked:
    statistics that lack an optional statistic the criterion reads for ``groups`` are refused
    before any score is computed, with the ``prunesweep stats`` flags that collect it (:meth:`ActivationStats.check_holds`)."""
    criterion.check_context(context)
    stats = context.stats
    if not isinstance(stats, ActivationStats):
        raise InputError(
            f"criterion {criterion.name!r} needs pruning.statistics.ActivationStats in context.stats, "
            f"got {type(stats).__name__}"
        )
    stats.check_holds(criterion.required_statistics(), groups=groups,
                      what=f"the statistics criterion {criterion.name!r} reads")
    return stats
