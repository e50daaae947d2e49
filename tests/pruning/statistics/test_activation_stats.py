"""Activation statistics: exact merging, files, hand-checked entropy/rank/CHIP, hooks cleaned up."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.structure import PruningSpace
from pruning.structure import ChannelGroup, ObservedOutput
from pruning.statistics import (
    StatsOptions,
    ActivationStats,
    LayerStats,
    StatsFileError,
    accumulate_stats,
    batched_map_rank,
    collect_activation_stats,
    compute_histogram_edges,
    count_zeros,
    histogram_entropy,
    leave_one_out_nuclear_norms,
    merge_stats,
)


def space_of(model, example_input):
    return PruningSpace.build(model, example_input)


def assert_stats_close(a: ActivationStats, b: ActivationStats) -> None:
    assert a.config == b.config
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        x, y = a.layers[name].tensors(), b.layers[name].tensors()
        assert x.keys() == y.keys(), name
        for field in x:
            if x[field].is_floating_point():
                torch.testing.assert_close(x[field], y[field], rtol=1e-9, atol=1e-9, msg=f"{name}.{field}")
            else:
                assert torch.equal(x[field], y[field]), f"{name}.{field}"


@pytest.fixture
def small_batches(calibration_batches):
    """Three batches of 4 images: enough to test sums, cheap enough for rank and CHIP."""
    x, y = calibration_batches[0]
    return [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]


def one_channel_identity():
    """A 1x1 conv with weight 1 (the identity) and a hand-made group observing it."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
    model[0].weight.data.fill_(1.0)
    group = ChannelGroup(
        name="0", size=1, producers=("0",), consumers=(), norms=(),
        observed=(ObservedOutput("0", "0", False),), inner=True,
    )
    return model, group


@pytest.mark.parametrize("model_name", ["tiny_resnet", "tiny_cnn"])
def test_merge_of_halves_equals_one_pass(model_name, request, example_input, small_batches):
    model = request.getfixturevalue(model_name)
    groups = space_of(model, example_input).groups
    edges = compute_histogram_edges(model, groups, small_batches[:1], StatsOptions(bins=16))
    kw = StatsOptions(rank=True, chip=True)
    first = accumulate_stats(model, groups, small_batches[:1], edges, kw)
    second = accumulate_stats(model, groups, small_batches[1:], edges, kw)
    whole = accumulate_stats(model, groups, small_batches, edges, kw)
    merged = first.merge(second)
    assert_stats_close(merged, whole)
    assert_stats_close(merge_stats(first, second), whole)
    assert all(int(s.n_images) == 12 for s in merged.layers.values())


@pytest.mark.parametrize("edge_batches", [1, 2, 5])
def test_one_pass_collection_equals_edge_pass_then_accumulation(edge_batches, tiny_resnet, example_input, small_batches):
    """The gap statistics take their edges inside the one pass and still equal the two-pass
    result, with fewer edge batches than given (2), more (5) and in a one-shot iterator; each
    batch is run through the model once."""
    groups = space_of(tiny_resnet, example_input).groups
    edges = compute_histogram_edges(tiny_resnet, groups, small_batches[:edge_batches], StatsOptions(bins=16))
    two_pass = accumulate_stats(tiny_resnet, groups, small_batches, edges, StatsOptions(chip=True))
    calls = []
    handle = tiny_resnet.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        one_pass = collect_activation_stats(tiny_resnet, groups, iter(small_batches),
                                            StatsOptions(bins=16, chip=True, edge_batches=edge_batches))
    finally:
        handle.remove()
    assert len(calls) == len(small_batches)
    assert_stats_close(one_pass, two_pass)
    for name, layer in one_pass.layers.items():
        assert torch.equal(layer.edges, edges[name])
        assert int(layer.hist.sum()) == layer.channels * 12


def test_spatial_collection_equals_edge_pass_then_accumulation(tiny_resnet, example_input, small_batches):
    groups = space_of(tiny_resnet, example_input).groups
    edges = compute_histogram_edges(tiny_resnet, groups, small_batches[:2], StatsOptions(bins=8, value="spatial"))
    two_pass = accumulate_stats(tiny_resnet, groups, small_batches, edges, StatsOptions(value="spatial", rank=False))
    one_call = collect_activation_stats(tiny_resnet, groups, iter(small_batches),
                                        StatsOptions(bins=8, value="spatial", rank=False, edge_batches=2))
    assert_stats_close(one_call, two_pass)


def test_merge_refuses_different_edges_or_config(tiny_resnet, example_input, small_batches):
    groups = space_of(tiny_resnet, example_input).groups
    edges = compute_histogram_edges(tiny_resnet, groups, small_batches[:1])
    shifted = {k: v + 0.1 for k, v in edges.items()}
    a = accumulate_stats(tiny_resnet, groups, small_batches[:1], edges, StatsOptions(rank=False))
    b = accumulate_stats(tiny_resnet, groups, small_batches[1:], shifted, StatsOptions(rank=False))
    with pytest.raises(InputError, match="histogram edges"):
        a.merge(b)
    c = accumulate_stats(tiny_resnet, groups, small_batches[1:], edges, StatsOptions(rank=True))
    with pytest.raises(InputError, match="collected differently"):
        a.merge(c)


def test_check_holds_names_what_was_not_collected_and_its_flag(tiny_resnet, example_input, small_batches):
    space = space_of(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, small_batches, StatsOptions(read_inputs=True))
    stats.check_holds({"read_inputs"})  # collected: no error
    stats.check_holds(())
    with pytest.raises(InputError) as raised:
        stats.check_holds({"per_class", "chip", "read_inputs"}, what="these statistics")
    assert str(raised.value) == ("these statistics were collected without chip, per_class: "
                                 "collect them with `prunesweep stats --chip --per-class`")


def test_check_holds_asks_for_consumer_tensors_only_where_a_group_has_its_own(tiny_resnet, tiny_cnn, example_input,
                                                                              small_batches):
    plain = space_of(tiny_cnn, example_input).groups  # no residual coupling: consumers read the producers
    collect_activation_stats(tiny_cnn, plain, small_batches,
                             StatsOptions(rank=False)).check_holds({"read_inputs"}, groups=plain)
    coupled = space_of(tiny_resnet, example_input).groups
    stats = collect_activation_stats(tiny_resnet, coupled, small_batches, StatsOptions(rank=False))
    with pytest.raises(InputError, match="without read_inputs: collect them with `prunesweep stats --read-inputs`"):
        stats.check_holds({"read_inputs"}, groups=coupled)


def test_save_load_round_trip(tiny_cnn, example_input, small_batches, tmp_path):
    groups = space_of(tiny_cnn, example_input).groups
    stats = collect_activation_stats(tiny_cnn, groups, small_batches, StatsOptions(chip=True))
    path = tmp_path / "stats.pt"
    stats.save(path)
    loaded = ActivationStats.load(path)
    assert_stats_close(loaded, stats)
    assert loaded.layers["hidden"].rank_sum is None
    assert [p.name for p in tmp_path.iterdir()] == ["stats.pt"]  # no temporary file left


@pytest.mark.parametrize("content", ["garbage", "foreign", "truncated"])
def test_unreadable_file_raises_one_line_error(content, tiny_resnet, example_input, calibration_batches, tmp_path):
    path = tmp_path / "bad.pt"
    if content == "garbage":
        path.write_bytes(b"\x00not a torch file\n" * 10)
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    else:
        groups = space_of(tiny_resnet, example_input).groups
        collect_activation_stats(tiny_resnet, groups, calibration_batches[:1], StatsOptions(rank=False)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StatsFileError) as info:
        ActivationStats.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_entropy_by_hand():
    hist = torch.tensor([[2, 2, 0, 0], [4, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    expected = torch.tensor([math.log(2), 0.0, math.log(4), 0.0], dtype=torch.float64)
    torch.testing.assert_close(histogram_entropy(hist), expected)

    # end to end: constant images with values 0, 0, 1, 3 -> GAP values; 4 bins over [min, max] = [0, 3]
    # (edge_quantile=0: min and max; the default 0.1 %..99.9 % quantiles would trim the range)
    model, group = one_channel_identity()
    images = torch.tensor([0.0, 0.0, 1.0, 3.0])[:, None, None, None].expand(4, 1, 5, 5).contiguous()
    stats = collect_activation_stats(model, [group], [(images, None)], StatsOptions(bins=4, edge_quantile=0.0))
    edges = stats.layers["0"].edges[0]
    torch.testing.assert_close(edges[[0, -1]], torch.tensor([-0.03, 3.03]))
    assert stats.layers["0"].hist.tolist() == [[2, 1, 0, 1]]
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats.channel_entropy(group).item() == pytest.approx(h)
    # values outside the edges fall in the end bins
    far = torch.tensor([-10.0, 10.0])[:, None, None, None].expand(2, 1, 5, 5).contiguous()
    outside = accumulate_stats(model, [group], [(far, None)], {"0": stats.layers["0"].edges})
    assert outside.layers["0"].hist.tolist() == [[1, 0, 0, 1]]


def test_spatial_histogram_counts_every_position(tiny_resnet, example_input, calibration_batches):
    groups = space_of(tiny_resnet, example_input).groups
    stats = collect_activation_stats(tiny_resnet, groups, calibration_batches,
                                     StatsOptions(value="spatial", rank=False))
    for s in stats.layers.values():
        assert torch.all(s.hist.sum(1) == s.n_positions)
        assert int(s.n_positions) == int(s.n_images) * int(s.map_size.prod())


def test_batched_rank_equals_per_map_loop():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 6, 5, generator=g)
    maps[0, 0] = 0.0  # rank 0
    maps[1, 2] = torch.outer(torch.randn(6, generator=g), torch.randn(5, generator=g))  # rank 1
    u, v = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    maps[2, 3] = u @ v  # rank 2
    batched = batched_map_rank(maps)
    loop = torch.tensor([[torch.linalg.matrix_rank(maps[b, c]).item() for c in range(4)] for b in range(3)])
    assert torch.equal(batched, loop)
    assert (batched[0, 0], batched[1, 2], batched[2, 3]) == (0, 1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h, w", [(28, 28), (7, 12), (12, 7)])
def test_batched_rank_equals_matrix_rank_on_relu_maps_of_every_rank(h, w, dtype):
    # products of random factors of each rank, some scaled far down, then ReLU'd as activations are
    g = torch.Generator().manual_seed(h * w)
    k = min(h, w)
    maps = torch.stack([torch.randn(h, r, generator=g) @ torch.randn(r, w, generator=g) * 10.0 ** -(r % 4)
                        for r in range(k + 1) for _ in range(3)]).to(dtype)
    maps = torch.relu(maps).view(k + 1, 3, h, w)
    expected = torch.linalg.matrix_rank(maps.reshape(-1, h, w)).view(k + 1, 3)
    assert torch.equal(batched_map_rank(maps), expected)


@pytest.mark.parametrize("shape", [(3, 4, 9), (2, 6, 4)])  # C <= H*W and C > H*W
def test_leave_one_out_nuclear_norms_exact(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a[0, 1] = a[0, 0]  # a duplicated row
    full, without = leave_one_out_nuclear_norms(a)
    for b in range(shape[0]):
        torch.testing.assert_close(full[b], torch.linalg.matrix_norm(a[b], ord="nuc"))
        for c in range(shape[1]):
            zeroed = a[b].clone()
            zeroed[c] = 0
            torch.testing.assert_close(without[b, c], torch.linalg.matrix_norm(zeroed, ord="nuc"))


def test_duplicate_orthogonal_row_independence():
    """Orthogonal rows: a unique row scores its norm, each copy of a duplicate (sqrt 2 - 1) x norm."""
    a = torch.zeros(1, 3, 4, dtype=torch.float64)
    a[0, 0, 0] = a[0, 1, 0] = 2.0
    a[0, 2, 1] = 3.0
    full, without = leave_one_out_nuclear_norms(a)
    ci = full[:, None] - without
    torch.testing.assert_close(ci[0], torch.tensor([2 * (2**0.5 - 1), 2 * (2**0.5 - 1), 3.0], dtype=torch.float64))


def test_dead_channel_has_zero_entropy_rank_and_full_apoz(tiny_resnet, example_input, small_batches):
    with torch.no_grad():  # layer1.conv1 channel 3 -> BN output exactly 0 -> ReLU 0
        tiny_resnet.layer1.conv1.weight[3] = 0
        tiny_resnet.layer1.bn1.running_mean[3] = 0
        tiny_resnet.layer1.bn1.bias[3] = 0
    space = space_of(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, small_batches)
    group = space["layer1.conv1"]
    assert stats.channel_entropy(group)[3] == 0
    assert stats.channel_rank(group)[3] == 0
    assert stats.channel_apoz(group)[3] == 1
    assert stats.channel_mean(group)[3] == 0
    others = torch.arange(8) != 3
    assert torch.all(stats.channel_entropy(group)[others] > 0)


@pytest.mark.parametrize("per_class", [False, True])
def test_sums_match_a_direct_computation(tiny_resnet, example_input, small_batches, per_class):
    space = space_of(tiny_resnet, example_input)
    stats = collect_activation_stats(tiny_resnet, space.groups, small_batches,
                                     StatsOptions(rank=False, per_class=per_class))
    seen = []
    handle = tiny_resnet.layer2.bn1.register_forward_hook(lambda m, i, o: seen.append(torch.relu(o)))
    with torch.no_grad():
        for x, _ in small_batches:
            tiny_resnet(x)
    handle.remove()
    act = torch.cat(seen).double()
    gap = act.mean((2, 3))
    s = stats.layers["layer2.bn1"]
    torch.testing.assert_close(s.sum, gap.sum(0))
    torch.testing.assert_close(s.gram, gap.T @ gap)
    assert torch.equal(s.zeros, (act == 0).sum((0, 2, 3)))
    assert 0 < int(s.zeros.sum()) < act.numel()  # the ReLU maps have zeros and non-zeros to count
    if per_class:
        assert torch.equal(s.class_zeros.sum(0), s.zeros)
    assert s.map_size.tolist() == [14, 14]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_count_zeros_equals_the_count_of_zero_entries(dtype):
    torch.manual_seed(0)
    signed = torch.randn(6, 5, 9, 7).to(dtype)
    signed[:, 2] = 0  # a dead channel
    for x in (torch.relu(signed), signed):
        for dims in ((0, 2, 3), (2, 3)):
            expected = (x == 0).sum(dims)
            counted = count_zeros(x, dims)
            assert counted.dtype == torch.int32
            assert torch.equal(counted.long(), expected)


def test_count_zeros_stays_exact_past_float32_integers():
    # 4097 x 4097 = 16,785,409 zeros: an odd count above 2**24, which float32 cannot hold
    x = torch.zeros(1, 1, 4097, 4097)
    assert count_zeros(x, (0, 2, 3)).item() == 4097 * 4097


def test_linear_outputs_have_no_rank(tiny_cnn, example_input, small_batches):
    space = space_of(tiny_cnn, example_input)
    stats = collect_activation_stats(tiny_cnn, space.groups, small_batches)
    hidden = space["hidden"]
    assert stats.layers["hidden"].rank_sum is None
    assert torch.isnan(stats.channel_rank(hidden)).all()
    torch.testing.assert_close(stats.channel_rank(hidden, linear_as_1x1=True), 1 - stats.channel_apoz(hidden))
    assert torch.isfinite(stats.channel_entropy(hidden)).all()


def test_hooks_removed_and_mode_restored_even_on_error(tiny_resnet, example_input, calibration_batches):
    space = space_of(tiny_resnet, example_input)
    tiny_resnet.train()
    tiny_resnet.layer1.eval()
    modes = {n: m.training for n, m in tiny_resnet.named_modules()}
    bn = tiny_resnet.bn1.running_mean.clone()

    def failing():
        yield calibration_batches[0]
        raise RuntimeError("loader broke")

    collect_activation_stats(tiny_resnet, space.groups, calibration_batches, progress=False)
    with pytest.raises(RuntimeError, match="loader broke"):
        collect_activation_stats(tiny_resnet, space.groups, failing())
    assert {n: m.training for n, m in tiny_resnet.named_modules()} == modes
    assert all(not m._forward_hooks for m in tiny_resnet.modules())
    assert torch.equal(tiny_resnet.bn1.running_mean, bn)  # collected in eval mode


def test_one_shot_iterator_equals_list(tiny_resnet, example_input, calibration_batches):
    groups = space_of(tiny_resnet, example_input).groups
    a = collect_activation_stats(tiny_resnet, groups, calibration_batches, StatsOptions(rank=False))
    b = collect_activation_stats(tiny_resnet, groups, iter(calibration_batches), StatsOptions(rank=False))
    assert_stats_close(a, b)


def test_bad_arguments(tiny_resnet, example_input, calibration_batches):
    groups = space_of(tiny_resnet, example_input).groups
    with pytest.raises(InputError, match="histogram value"):
        collect_activation_stats(tiny_resnet, groups, calibration_batches, StatsOptions(value="median"))
    with pytest.raises(InputError, match="edge_batches must be at least 1"):
        collect_activation_stats(tiny_resnet, groups, calibration_batches, StatsOptions(edge_batches=0))
    with pytest.raises(InputError, match="bins must be at least 2"):
        collect_activation_stats(tiny_resnet, groups, calibration_batches, StatsOptions(bins=1))
    with pytest.raises(InputError, match="no calibration batches"):
        collect_activation_stats(tiny_resnet, groups, [])
    with pytest.raises(InputError, match="no histogram edges"):
        accumulate_stats(tiny_resnet, groups, calibration_batches, {})
    stats = collect_activation_stats(tiny_resnet, groups[:1], calibration_batches, StatsOptions(rank=False))
    with pytest.raises(InputError, match="no statistics"):
        stats.channel_entropy(groups[1])
    with pytest.raises(InputError, match="rank=True"):
        stats.channel_rank(groups[0])
    with pytest.raises(InputError, match="chip=True"):
        stats.channel_chip(groups[0])
    assert isinstance(stats.layers["bn1"], LayerStats)
