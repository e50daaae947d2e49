"""Activation statistics of prunable channels, as mergeable state.

One streaming pass over calibration batches hooks every observed output of the given
:class:`~pruning.structure.groups.ChannelGroup` s (the producer's BatchNorm output, or the producer's own
output without one, passed through ReLU when the model applies one right after) and accumulates,
per observed output and channel:

* ``hist``: counts over a fixed-edge histogram of the global-average-pooled activation per image
  (``value="gap"``, default) or of every spatial value (``value="spatial"``), for entropy.
  The edges are fixed beforehand by :func:`compute_histogram_edges` (a short first pass: the
  per-channel min/max widened by 1 % of the range each side); values outside fall in the end bins.
* ``rank_sum``: the sum over images of the matrix rank of each HxW map (HRank), one batched
  ``torch.linalg.matrix_rank`` call per hook call. Outputs of Linear layers have no maps: their
  ``rank_sum`` is ``None`` (``channel_rank`` reports NaN for them, or the rank of a 1x1 map when
  asked with ``linear_as_1x1=True``).
* ``sum`` / ``gram``: the sum of the GAP vectors x and of x x^T over images (mean, correlation).
* ``zeros``: the count of exactly-zero activations over all positions (APoZ).
* ``chip_sum`` (only with ``chip=True``): the sum over images of CHIP's channel independence,
  ``||A||_* - ||A with row c zeroed||_*`` for the (C, H*W) feature matrix A of one image.
* ``n_images``, ``n_positions`` (= images x H x W; a Linear output counts as a 1x1 map).

Everything is a sum or a count, so the state of two shards merges exactly into the state of one
pass over both (:meth:`ActivationStats.merge`), which lets workers collect shards in parallel.
No feature map is stored: memory is bounded by the per-channel accumulators (C x C for ``gram``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pruning.structure.groups import ChannelGroup
from pruning.errors import InputError

__all__ = [
    "LayerStats",
    "ActivationStats",
    "StatsFileError",
    "VALUE_MODES",
    "merge_stats",
    "compute_histogram_edges",
    "accumulate_stats",
    "collect_activation_stats",
    "histogram_entropy",
    "batched_map_rank",
    "leave_one_out_nuclear_norms",
]

VALUE_MODES = ("gap", "spatial")
FORMAT = "prunesweep-activation-stats"
VERSION = 1
#: relative widening of the first-pass [min, max] range on each side
EDGE_MARGIN = 0.01
#: elements of float64 scratch per eigvalsh stack in the CHIP computation (about 128 MiB)
_CHIP_CHUNK_ELEMENTS = 1 << 24


class StatsFileError(InputError):
    """A statistics file that cannot be read back (corrupt, truncated or not ours)."""


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
    rank_sum: [C] float64 sum over images of the HxW map ranks; None when not collected or
        when the output has no maps.
    chip_sum: [C] float64 sum over images of CHIP channel independence; None when not collected.
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


def histogram_entropy(hist: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a count matrix: H = -sum_k p_k log p_k, p = h / sum h.

    Empty bins contribute 0; an all-zero row has entropy 0.
    """
    counts = hist.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return -plogp.sum(-1)


def batched_map_rank(maps: torch.Tensor) -> torch.Tensor:
    """Ranks of a (B, C, H, W) activation's maps as a (B, C) tensor, in one batched call.

    Uses ``torch.linalg.matrix_rank``'s default tolerance (max(H, W) * eps * sigma_max), as
    HRank's reference implementation does per map.
    """
    b, c, h, w = maps.shape
    return torch.linalg.matrix_rank(maps.reshape(b * c, h, w)).reshape(b, c)


def leave_one_out_nuclear_norms(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nuclear norms of per-image feature matrices with each row zeroed in turn.

    ``features``: (B, C, N). Returns ``(full [B], without [B, C])`` where ``without[b, c]`` is
    ``||A_b with row c set to zero||_*``. Exact, without an SVD per channel of the (C, N)
    matrix: the nuclear norm is the sum of the square roots of the eigenvalues of a Gram matrix,
    taken on the smaller side:

    * C <= N: A A^T (C x C); zeroing row c zeroes row and column c of it;
    * C > N: A^T A (N x N); zeroing row c subtracts the rank-one term a_c a_c^T.

    The stacks of modified Gram matrices go through ``torch.linalg.eigvalsh`` a chunk of
    channels at a time (bounded scratch memory); computed in float64.
    """
    a = features.to(torch.float64)
    b, c, n = a.shape
    d = min(c, n)
    if c <= n:
        gram = a @ a.mT  # (B, C, C)
    else:
        gram = a.mT @ a  # (B, N, N)
    full = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(-1)
    without = torch.empty(b, c, dtype=torch.float64, device=a.device)
    img_step = max(1, _CHIP_CHUNK_ELEMENTS // (d * d))
    for i0 in range(0, b, img_step):
        g = gram[i0 : i0 + img_step]
        nb = g.shape[0]
        ch_step = max(1, _CHIP_CHUNK_ELEMENTS // (nb * d * d))
        for c0 in range(0, c, ch_step):
            cs = torch.arange(c0, min(c, c0 + ch_step), device=a.device)
            if c <= n:
                keep = 1.0 - F.one_hot(cs, c).to(torch.float64)  # (k, C)
                stack = g[:, None] * keep[None, :, :, None] * keep[None, :, None, :]
            else:
                rows = a[i0 : i0 + img_step, cs]  # (nb, k, N)
                stack = g[:, None] - rows[..., :, None] * rows[..., None, :]
            ev = torch.linalg.eigvalsh(stack)
            without[i0 : i0 + nb, cs] = ev.clamp_min(0).sqrt().sum(-1)
    return full, without


# ---------------------------------------------------------------------------------------------
# hooks


def _observed_outputs(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, bool]:
    """{observed module name: relu} over the groups, checked against the model."""
    modules = dict(model.named_modules())
    observed: dict[str, bool] = {}
    for group in groups:
        for obs in group.observed:
            if obs.module not in modules:
                raise ValueError(f"group {group.name!r}: the model has no module {obs.module!r}")
            if observed.setdefault(obs.module, obs.relu) != obs.relu:
                raise ValueError(f"module {obs.module!r} is observed both with and without ReLU")
    if not observed:
        raise ValueError("no groups to collect statistics for")
    return observed


def _batch_inputs(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _model_device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _as_maps(output: Any, name: str, relu: bool) -> tuple[torch.Tensor, bool]:
    """The observed activation as float (B, C, H, W) and whether it has real spatial maps."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"module {name!r} returned {type(output).__name__}, expected a tensor")
    x = output.detach()
    if relu:
        x = F.relu(x)
    x = x.float()
    if x.dim() == 4:
        return x, True
    if x.dim() == 2:
        return x[:, :, None, None], False
    raise ValueError(f"module {name!r}: cannot collect statistics of a {x.dim()}-D output")


def _hist_values(x: torch.Tensor, value: str) -> torch.Tensor:
    """(C, n) values to histogram: GAP per image or all positions."""
    if value == "gap":
        return x.mean((2, 3)).T
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@contextlib.contextmanager
def _hooked(model: nn.Module, observed: Mapping[str, bool], fn: Callable[[str, torch.Tensor, bool], None]):
    """Hooks on the observed modules, eval mode and no_grad; all undone on exit, even on error."""
    modules = dict(model.named_modules())
    was_training = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name, relu in observed.items():
            handles.append(
                modules[name].register_forward_hook(
                    lambda m, i, o, name=name, relu=relu: fn(name, o, relu)
                )
            )
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()
        for module, training in was_training.items():
            module.training = training


def _run(model: nn.Module, batches: Iterable, progress: bool, desc: str) -> int:
    device = _model_device(model)
    iterable = batches
    if progress:
        from tqdm.auto import tqdm

        total = len(batches) if hasattr(batches, "__len__") else None
        iterable = tqdm(batches, desc=desc, total=total)
    count = 0
    for batch in iterable:
        model(_batch_inputs(batch).to(device))
        count += 1
    if count == 0:
        raise ValueError("no calibration batches to collect statistics from")
    return count


def _check_value(value: str) -> None:
    if value not in VALUE_MODES:
        raise ValueError(f"unknown histogram value {value!r}; valid: {', '.join(VALUE_MODES)}")


def compute_histogram_edges(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    bins: int = 32,
    value: str = "gap",
) -> dict[str, torch.Tensor]:
    """First pass: per observed output, [C, bins+1] float32 uniform edges per channel.

    The range is the per-channel [min, max] of the histogrammed value over ``batches``, widened
    on each side by 1 % of the range, and at least by 1e-4 x max(1, |min|, |max|) so that a
    constant channel gets a proper (tiny) range and all its values fall in one bin.
    """
    _check_value(value)
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    observed = _observed_outputs(model, groups)
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def record(name: str, output: Any, relu: bool) -> None:
        x, _ = _as_maps(output, name, relu)
        v = _hist_values(x, value)
        vmin, vmax = v.min(1).values, v.max(1).values
        lo[name] = torch.minimum(lo[name], vmin) if name in lo else vmin
        hi[name] = torch.maximum(hi[name], vmax) if name in hi else vmax

    with _hooked(model, observed, record):
        _run(model, batches, False, "edges")

    edges: dict[str, torch.Tensor] = {}
    for name in observed:
        if name not in lo:
            raise ValueError(f"module {name!r} was not called by the forward pass")
        a, b = lo[name].double().cpu(), hi[name].double().cpu()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"module {name!r} produced non-finite activations")
        scale = torch.maximum(torch.maximum(a.abs(), b.abs()), torch.ones_like(a))
        pad = torch.maximum(EDGE_MARGIN * (b - a), 1e-4 * scale)
        steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
        edges[name] = ((a - pad)[:, None] + (b - a + 2 * pad)[:, None] * steps).float()
    return edges


class _Accumulator:
    """Running sums of one observed output, on the activation's device."""

    def __init__(self, name: str, x: torch.Tensor, has_maps: bool, edges: torch.Tensor, rank: bool, chip: bool):
        _, c, h, w = x.shape
        if edges.dim() != 2 or edges.shape[0] != c or edges.shape[1] < 3:
            raise ValueError(f"module {name!r}: edges of shape {tuple(edges.shape)} do not fit {c} channels")
        dev = x.device
        self.edges = edges.to(device=dev, dtype=torch.float32)
        self.inner = self.edges[:, 1:-1].contiguous()
        self.bins = self.edges.shape[1] - 1
        self.offsets = torch.arange(c, device=dev)[:, None] * self.bins
        self.hist = torch.zeros(c * self.bins, dtype=torch.int64, device=dev)
        self.sum = torch.zeros(c, dtype=torch.float64, device=dev)
        self.gram = torch.zeros(c, c, dtype=torch.float64, device=dev)
        self.zeros = torch.zeros(c, dtype=torch.int64, device=dev)
        self.n_images = 0
        self.n_positions = 0
        self.has_maps = has_maps
        self.map_size = (h, w) if has_maps else (0, 0)
        self.rank_sum = torch.zeros(c, dtype=torch.float64, device=dev) if rank and has_maps else None
        self.chip_sum = torch.zeros(c, dtype=torch.float64, device=dev) if chip else None

    def update(self, name: str, x: torch.Tensor, has_maps: bool, value: str) -> None:
        b, c, h, w = x.shape
        if has_maps != self.has_maps or (has_maps and (h, w) != self.map_size):
            raise ValueError(f"module {name!r}: output shape changed between batches; use one input size")
        v = _hist_values(x, value).contiguous()
        idx = torch.searchsorted(self.inner, v, right=True)
        self.hist += torch.bincount((idx + self.offsets).flatten(), minlength=self.hist.numel())
        gap = x.mean((2, 3)).double()
        self.sum += gap.sum(0)
        self.gram += gap.T @ gap
        self.zeros += (x == 0).sum((0, 2, 3))
        self.n_images += b
        self.n_positions += b * h * w
        if self.rank_sum is not None:
            self.rank_sum += batched_map_rank(x).sum(0).double()
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
            chip_sum=cpu(self.chip_sum),
        )


def accumulate_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    edges: Mapping[str, torch.Tensor],
    *,
    value: str = "gap",
    rank: bool = True,
    chip: bool = False,
    progress: bool = False,
) -> ActivationStats:
    """The mergeable pass: statistics of ``batches`` with fixed histogram ``edges``.

    Running it on shards of the data with the same edges and merging the results gives the
    statistics of one pass over all of it (up to float summation order).
    """
    _check_value(value)
    observed = _observed_outputs(model, groups)
    missing = [name for name in observed if name not in edges]
    if missing:
        raise ValueError(f"no histogram edges for {', '.join(missing)}")
    bins = {int(edges[name].shape[-1]) - 1 for name in observed}
    if len(bins) != 1:
        raise ValueError(f"histogram edges disagree on the number of bins: {sorted(bins)}")
    accumulators: dict[str, _Accumulator] = {}

    def record(name: str, output: Any, relu: bool) -> None:
        x, has_maps = _as_maps(output, name, relu)
        if name not in accumulators:
            accumulators[name] = _Accumulator(name, x, has_maps, edges[name], rank, chip)
        accumulators[name].update(name, x, has_maps, value)

    with _hooked(model, observed, record):
        _run(model, batches, progress, "activation stats")

    not_called = [name for name in observed if name not in accumulators]
    if not_called:
        raise ValueError(f"module(s) not called by the forward pass: {', '.join(not_called)}")
    layers = {name: accumulators[name].finish() for name in observed}
    return ActivationStats(layers, bins=bins.pop(), value=value, rank=rank, chip=chip)


def collect_activation_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    bins: int = 32,
    value: str = "gap",
    rank: bool = True,
    chip: bool = False,
    edge_batches: int = 1,
    progress: bool = False,
) -> ActivationStats:
    """Edges from the first ``edge_batches`` batches, then statistics over all ``batches``.

    ``batches`` may be a list, a re-iterable loader or a one-shot iterator (its first batches
    are kept in memory for the second pass).
    """
    if edge_batches < 1:
        raise ValueError(f"edge_batches must be at least 1, got {edge_batches}")
    if isinstance(batches, Iterator):  # one-shot: keep the edge batches for the main pass
        head = list(itertools.islice(batches, edge_batches))
        edges = compute_histogram_edges(model, groups, head, bins=bins, value=value)
        batches = itertools.chain(head, batches)
    else:
        head = itertools.islice(batches, edge_batches)
        edges = compute_histogram_edges(model, groups, head, bins=bins, value=value)
    return accumulate_stats(
        model, groups, batches, edges, value=value, rank=rank, chip=chip, progress=progress
    )


# ---------------------------------------------------------------------------------------------
# the state


class ActivationStats:
    """Per observed output :class:`LayerStats`, plus the configuration they were collected with.

    ``layers``: {observed module name: LayerStats}. ``bins``, ``value`` ("gap" or "spatial"),
    ``rank`` and ``chip`` (which optional statistics were collected).

    The ``channel_*`` accessors take a :class:`~pruning.structure.groups.ChannelGroup` and return a
    float64 CPU tensor of ``group.size`` values, the mean over the group's observed outputs
    (several for residual-coupled groups).
    """

    def __init__(
        self,
        layers: Mapping[str, LayerStats],
        *,
        bins: int,
        value: str = "gap",
        rank: bool = True,
        chip: bool = False,
    ) -> None:
        _check_value(value)
        self.layers = dict(layers)
        self.bins = int(bins)
        self.value = value
        self.rank = bool(rank)
        self.chip = bool(chip)

    @property
    def config(self) -> dict[str, Any]:
        return {"bins": self.bins, "value": self.value, "rank": self.rank, "chip": self.chip}

    def __repr__(self) -> str:
        images = {int(s.n_images) for s in self.layers.values()}
        return f"ActivationStats({len(self.layers)} outputs, images={sorted(images)}, {self.config})"

    # -- merging -----------------------------------------------------------------------------

    def merge(self, other: ActivationStats) -> ActivationStats:
        """The state of one pass over both shards of data. Needs equal config, layers and edges."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"cannot merge ActivationStats with {type(other).__name__}")
        if self.config != other.config:
            raise ValueError(f"cannot merge statistics collected differently: {self.config} vs {other.config}")
        if self.layers.keys() != other.layers.keys():
            diff = sorted(self.layers.keys() ^ other.layers.keys())
            raise ValueError(f"cannot merge statistics of different layers: {', '.join(diff)}")
        merged = {}
        for name, a in self.layers.items():
            b = other.layers[name]
            fields = {}
            for f in dataclasses.fields(LayerStats):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if (x is None) != (y is None):
                    raise ValueError(f"layer {name!r}: {f.name} collected in only one of the states")
                if x is None:
                    fields[f.name] = None
                elif f.name in _FIXED_FIELDS:
                    if x.shape != y.shape or not torch.equal(x, y):
                        what = "histogram edges" if f.name == "edges" else "map sizes"
                        raise ValueError(f"layer {name!r}: cannot merge statistics with different {what}")
                    fields[f.name] = x.clone()
                else:
                    if x.shape != y.shape:
                        raise ValueError(f"layer {name!r}: {f.name} shapes differ")
                    fields[f.name] = x + y
            merged[name] = LayerStats(**fields)
        return ActivationStats(merged, **self.config)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file + ``os.replace``), readable with weights_only loading."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "config": json.loads(json.dumps(self.config)),
            "layers": {name: s.tensors() for name, s in self.layers.items()},
        }
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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
            return cls(layers, bins=config["bins"], value=config["value"], rank=config["rank"], chip=config["chip"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fail(f"malformed: {exc}") from None

    # -- accessors -----------------------------------------------------------------------------

    def layer_stats(self, group: ChannelGroup) -> list[LayerStats]:
        """The statistics of each of the group's observed outputs."""
        out = []
        for obs in group.observed:
            stats = self.layers.get(obs.module)
            if stats is None:
                raise ValueError(
                    f"no statistics for {obs.module!r} (group {group.name!r}); "
                    "were they collected on this model and these groups?"
                )
            if stats.channels != group.size:
                raise ValueError(
                    f"statistics of {obs.module!r} have {stats.channels} channels, group {group.name!r} has {group.size}"
                )
            if int(stats.n_images) == 0:
                raise ValueError(f"statistics of {obs.module!r} cover no images")
            out.append(stats)
        return out

    def _mean(self, group: ChannelGroup, fn: Callable[[LayerStats], torch.Tensor]) -> torch.Tensor:
        return torch.stack([fn(s).to(torch.float64) for s in self.layer_stats(group)]).mean(0)

    def channel_entropy(self, group: ChannelGroup) -> torch.Tensor:
        """H_c = -sum_k p_k log p_k (nats) of each channel's histogram."""
        return self._mean(group, lambda s: histogram_entropy(s.hist))

    def channel_rank(self, group: ChannelGroup, *, linear_as_1x1: bool = False) -> torch.Tensor:
        """Mean rank of the HxW maps per image.

        Outputs without maps (Linear layers) give NaN, or with ``linear_as_1x1`` the mean rank
        of their values taken as 1x1 maps (1 where non-zero): the fraction of non-zero values.
        """
        if not self.rank:
            raise ValueError("map ranks were not collected; collect the statistics with rank=True")

        def rank(s: LayerStats) -> torch.Tensor:
            if s.rank_sum is not None:
                return s.rank_sum / s.n_images
            if linear_as_1x1:
                return 1.0 - s.zeros.double() / s.n_positions
            return torch.full((s.channels,), math.nan, dtype=torch.float64)

        return self._mean(group, rank)

    def channel_relative_rank(self, group: ChannelGroup) -> torch.Tensor:
        """Mean map rank divided by min(H, W), in [0, 1]; Linear outputs count as 1x1 maps."""
        if not self.rank:
            raise ValueError("map ranks were not collected; collect the statistics with rank=True")

        def relative(s: LayerStats) -> torch.Tensor:
            if s.rank_sum is not None:
                return s.rank_sum / s.n_images / int(s.map_size.min())
            return 1.0 - s.zeros.double() / s.n_positions

        return self._mean(group, relative)

    def channel_mean(self, group: ChannelGroup) -> torch.Tensor:
        """Mean over images of the global-average-pooled activation."""
        return self._mean(group, lambda s: s.sum / s.n_images)

    def channel_apoz(self, group: ChannelGroup) -> torch.Tensor:
        """Average percentage of zeros: the fraction of exactly-zero values over all positions."""
        return self._mean(group, lambda s: s.zeros.double() / s.n_positions)

    def channel_chip(self, group: ChannelGroup) -> torch.Tensor:
        """CHIP channel independence, mean over images: ||A||_* - ||A with row c zeroed||_*."""
        if not self.chip:
            raise ValueError(
                "CHIP statistics were not collected; collect them with "
                "collect_activation_stats(..., chip=True)"
            )
        return self._mean(group, lambda s: s.chip_sum / s.n_images)


def merge_stats(a: ActivationStats, b: ActivationStats) -> ActivationStats:
    """``a.merge(b)``."""
    return a.merge(b)


def stats_from_context(criterion: Any, context: Any) -> ActivationStats:
    """The :class:`ActivationStats` of a :class:`~pruning.criteria._base.ScoringContext`, checked."""
    criterion.check_context(context)
    stats = context.stats
    if not isinstance(stats, ActivationStats):
        raise ValueError(
            f"criterion {criterion.name!r} needs pruning.statistics.stats.ActivationStats in context.stats, "
            f"got {type(stats).__name__}"
        )
    return stats
