"""Map ranks within a budget: large maps ranked on a grid of rows and columns, at most RANK_MAPS
maps per output, ranks counted by inertia; shards still merge into one pass."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from pruning.statistics import (

    StatsOptions,
    RANK_MAP_SIDE,
    accumulate_stats,
    batched_map_rank,
    collect_activation_stats,
    compute_histogram_edges,
    rank_subsample,
)
from pruning.structure import PruningSpace


def test_subsampled_map_keeps_low_ranks_and_caps_full_ones():
    g = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.randn(70, r, generator=g) @ torch.randn(r, 45, generator=g) for r in (0, 1, 5, 31, 45)])
    small = rank_subsample(maps[None], RANK_MAP_SIDE)
    assert small.shape == (1, 5, 24, 23)  # every 3rd row, every 2nd column
    assert batched_map_rank(small).tolist() == [[0, 1, 5, 23, 23]]
    assert torch.equal(small[0, 3, 1], maps[3, 3, ::2])
    assert rank_subsample(maps[None, :, :32, :20], RANK_MAP_SIDE).shape == (1, 5, 32, 20)  # fits: unchanged


@pytest.mark.parametrize("h, w", [(5, 9), (16, 16), (32, 11)])
def test_inertia_rank_equals_matrix_rank_on_degenerate_maps(h, w):
    # zero, repeated and proportional rows/columns, as ReLU and padding make them
    g = torch.Generator().manual_seed(h + w)
    maps = torch.relu(torch.randn(6, 4, h, w, generator=g))
    maps[0, 0] = 0
    maps[1, 1, :, 1:] = maps[1, 1, :, :1]
    maps[2, 2, 1:] = 3 * maps[2, 2, :1]
    maps[3, 3, :, 2:] = 0
    maps[4, :, ::2] = maps[4, :, :1]
    expected = torch.linalg.matrix_rank(maps.reshape(-1, h, w)).view(6, 4)
    assert torch.equal(batched_map_rank(maps), expected)


def test_large_maps_are_ranked_on_the_grid(tiny_resnet):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 1, 40, 40, generator=g), None)]
    space = PruningSpace.build(tiny_resnet, batches[0][0])
    stats = collect_activation_stats(tiny_resnet, space.groups, batches)
    captured = {}
    handle = tiny_resnet.layer1.bn1.register_forward_hook(lambda m, i, o: captured.setdefault("x", torch.relu(o)))
    with torch.no_grad():
        tiny_resnet(batches[0][0])
    handle.remove()
    s = stats.layers["layer1.bn1"]
    assert s.map_size.tolist() == [40, 40]
    expected = batched_map_rank(rank_subsample(captured["x"], RANK_MAP_SIDE)).sum(0).double()
    torch.testing.assert_close(s.rank_sum, expected, rtol=0, atol=0)
    group = next(g for g in space.groups if [o.module for o in g.observed] == ["layer1.bn1"])
    relative = stats.channel_relative_rank(group)
    torch.testing.assert_close(relative, expected / 2 / 20)  # 40 positions: every 2nd, 20 ranked


def test_wide_outputs_rank_fewer_images_and_shards_merge(tiny_resnet, example_input):
    space = PruningSpace.build(tiny_resnet, example_input)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 1, 28, 28, generator=g), None) for _ in range(4)]
    edges = compute_histogram_edges(tiny_resnet, space.groups, batches[:1])
    with mock.patch("pruning.statistics._accumulator.RANK_MAPS", 40):
        one_pass = accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=8))
        parts = [accumulate_stats(tiny_resnet, space.groups, b, edges, StatsOptions(rank_images=8), image_offset=o)
                 for b, o in ((batches[:1], 0), (batches[1:], 3))]
    for name, s in one_pass.layers.items():
        if s.rank_sum is not None:
            assert int(s.n_rank_images) == min(8, max(1, 40 // s.channels)), name
    merged = parts[0].merge(parts[1])
    for name, s in one_pass.layers.items():
        for field, t in s.tensors().items():
            torch.testing.assert_close(merged.layers[name].tensors()[field], t, rtol=1e-9, atol=1e-9)


def test_progress_bar_counts_batches_on_stderr(tiny_resnet, example_input, capsys):
    space = PruningSpace.build(tiny_resnet, example_input)
    batches = [(example_input, None)] * 3
    collect_activation_stats(tiny_resnet, space.groups, batches, progress=True)
    captured = capsys.readouterr()
    assert "activation stats" in captured.err and "3/3" in captured.err and captured.out == ""
    collect_activation_stats(tiny_resnet, space.groups, batches)
    assert capsys.readouterr().err == ""
