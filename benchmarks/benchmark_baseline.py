"""What the accuracy benchmarks (criteria_accuracy.py, snpfi_interactions.py) set up the same way:
the checkpoint, its data, pruning space, test loader, calibration batches and base cost/accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.structure import PruningSpace, load_checkpoint, measure_cost
from pruning.training import evaluate


@dataclass
class BenchmarkBaseline:
    model: torch.nn.Module
    spec: Any
    splits: Any
    shape: tuple[int, ...]
    space: PruningSpace
    groups: list
    test_loader: Any
    batches: list
    base_cost: Any
    base_accuracy: float


def load_benchmark_baseline(checkpoint: str, *, strategy: str, test_subset: int | None, calibration_images: int,
                            batch_size: int) -> BenchmarkBaseline:
    """The checkpoint's model and data; the test split cut to its first ``test_subset`` images."""
    model, spec = load_checkpoint(checkpoint)
    splits = load_data(DataConfig(**spec.meta["data"]))
    shape = tuple(spec.input_shape)
    space = PruningSpace.build(model, torch.zeros(1, *shape))
    test_data = splits.test
    if test_subset:
        test_data = torch.utils.data.Subset(splits.test, range(test_subset))
    test_loader = make_loader(test_data, 500, shuffle=False)
    return BenchmarkBaseline(
        model=model, spec=spec, splits=splits, shape=shape, space=space, groups=space.select(strategy),
        test_loader=test_loader, batches=calibration_batches(splits, calibration_images, batch_size),
        base_cost=measure_cost(model, shape), base_accuracy=evaluate(model, test_loader).score,
    )
