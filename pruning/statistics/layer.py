"""The statistics of one observed output (:class:`LayerStats`) and their exact merge."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from pruning.errors import InputError

__all__ = ["LayerStats", "merge_layer", "pad_classes", "class_rows", "REQUIRED_FIELDS", "OPTIONAL_FIELDS", "CLASS_FIELDS"]


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
    class_images: [K] int64 images of each label 0..K-1 (K: one more than the largest label seen);
        None unless collected with ``per_class=True``, as are the other ``class_*`` fields.
    class_sum: [K, C] float64 ``sum`` restricted to the images of each class.
    class_zeros: [K, C] int64 ``zeros`` restricted to the images of each class.
    class_rank_sum: [K, C] float64 ``rank_sum`` per class; ``class_rank_images``: [K] int64 the
        ranked images of each class. None where ``rank_sum`` is.
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
    class_images: torch.Tensor | None = None
    class_sum: torch.Tensor | None = None
    class_zeros: torch.Tensor | None = None
    class_rank_sum: torch.Tensor | None = None
    class_rank_images: torch.Tensor | None = None

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

    def is_finite(self) -> bool:
        """No NaN or infinite value in any floating-point field."""
        return all(bool(torch.isfinite(t).all()) for t in self.tensors().values() if t.is_floating_point())


REQUIRED_FIELDS = tuple(f.name for f in dataclasses.fields(LayerStats) if f.default is dataclasses.MISSING)
OPTIONAL_FIELDS = tuple(f.name for f in dataclasses.fields(LayerStats) if f.default is not dataclasses.MISSING)
#: fields that must be identical for two states to merge (the rest are summed)
_FIXED_FIELDS = ("edges", "map_size")
#: per-class fields, [K] or [K, C]: two shards may have seen different largest labels
CLASS_FIELDS = ("class_images", "class_sum", "class_zeros", "class_rank_sum", "class_rank_images")


def pad_classes(x: torch.Tensor, classes: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``classes`` rows (classes a shard never saw)."""
    if x.shape[0] == classes:
        return x
    return torch.cat([x, x.new_zeros((classes - x.shape[0],) + tuple(x.shape[1:]))])


def class_rows(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[K', C] per-image means ``values / counts`` of the classes with at least one image."""
    seen = counts > 0
    if not bool(seen.any()):
        raise InputError("no image of any class in these per-class statistics")
    return values[seen].double() / counts[seen, None].double()


def merge_layer(name: str, a: LayerStats, b: LayerStats) -> LayerStats:
    """The statistics of one observed output over both shards ``a`` and ``b`` (``name`` for errors):
    sums and counts added, per-class rows padded to the larger class count, edges and map sizes
    required equal."""
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
        elif f.name in CLASS_FIELDS:
            classes = max(x.shape[0], y.shape[0])
            if x.shape[1:] != y.shape[1:]:
                raise InputError(f"layer {name!r}: {f.name} shapes differ")
            fields[f.name] = pad_classes(x, classes) + pad_classes(y, classes)
        else:
            if x.shape != y.shape:
                raise InputError(f"layer {name!r}: {f.name} shapes differ")
            fields[f.name] = x + y
    return LayerStats(**fields)
