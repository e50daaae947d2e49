"""A finite model whose activations are not finite on the calibration images is refused by the
statistics pass in one line naming the first such module, whichever batch shows it; a statistics
file holding NaN is refused when read."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.statistics import ActivationStats, StatsFileError, StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace


def two_convs() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def images(batches: int, nan_batch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(batches):
        x = torch.rand(4, 1, 8, 8)
        if i == nan_batch:
            x[0, 0, 3, 3] = float("nan")
        out.append((x, torch.zeros(4, dtype=torch.long)))
    return out


@pytest.mark.parametrize("value", ["gap", "spatial"])
@pytest.mark.parametrize("nan_batch", [0, 3], ids=["edge batch", "later batch"])
def test_a_nan_image_is_refused_naming_the_first_module(value, nan_batch):
    model = two_convs()
    groups = PruningSpace.build(model, torch.rand(1, 1, 8, 8)).groups
    options = StatsOptions(value=value, edge_batches=1)
    with pytest.raises(InputError, match=r"^module '0' produced non-finite activations \(NaN or inf\)") as error:
        collect_activation_stats(model, groups, images(4, nan_batch), options)
    assert "\n" not in str(error.value)
    collect_activation_stats(model, groups, images(4), options)  # the same pass on finite images holds


def test_finite_weights_that_overflow_are_refused_naming_the_module():
    model = two_convs()
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[2].weight.fill_(1e30)  # finite, but 1e30 * 1e30 overflows float32
    groups = PruningSpace.build(model, torch.rand(1, 1, 8, 8)).groups
    with pytest.raises(InputError, match=r"module '2' produced non-finite activations"):
        collect_activation_stats(model, groups, images(2))


def test_a_statistics_file_with_nan_is_refused_when_read(tmp_path):
    model = two_convs()
    groups = PruningSpace.build(model, torch.rand(1, 1, 8, 8)).groups
    stats = collect_activation_stats(model, groups, images(2))
    name = next(iter(stats.layers))
    stats.layers[name].sum[0] = float("nan")
    path = tmp_path / "stats.pt"
    stats.save(path)
    with pytest.raises(StatsFileError, match=rf"{path}: .*layer '{name}' holds non-finite values"):
        ActivationStats.load(path)
