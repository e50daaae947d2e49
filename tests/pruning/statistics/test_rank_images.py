"""Map ranks on the first ``rank_images`` images: equal to a pass over those images only, exact
across shards with their image offsets, old files (ranked every image) still read the same."""
from __future__ import annotations

import pytest
import torch

from pruning.errors import InputError
from pruning.statistics import (
    StatsOptions,
    RANK_IMAGES,
    ActivationStats,
    accumulate_stats,
    collect_activation_stats,
    compute_histogram_edges,
)
from pruning.structure import PruningSpace


@pytest.fixture
def space(tiny_resnet, example_input):
    return PruningSpace.build(tiny_resnet, example_input)


@pytest.fixture
def batches():
    """Four batches of 3 images: 12 images, so rank_images=7 ends inside the third batch."""
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(3, 1, 28, 28, generator=g), torch.randint(0, 10, (3,), generator=g)) for _ in range(4)]


def assert_same(a: ActivationStats, b: ActivationStats) -> None:
    assert a.config == b.config and a.layers.keys() == b.layers.keys()
    for name, x in a.layers.items():
        y = b.layers[name].tensors()
        assert x.tensors().keys() == y.keys(), name
        for field, t in x.tensors().items():
            if t.is_floating_point():
                torch.testing.assert_close(y[field], t, rtol=1e-9, atol=1e-9, msg=f"{name}.{field}")
            else:
                assert torch.equal(y[field], t), (name, field)


def test_ranks_cover_only_the_first_images(tiny_resnet, space, batches):
    edges = compute_histogram_edges(tiny_resnet, space.groups, batches[:1])
    limited = accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=7))
    everything = accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=None))
    first7 = [batches[0], batches[1], (batches[2][0][:1], batches[2][1][:1])]
    only_first = accumulate_stats(tiny_resnet, space.groups, first7, edges, StatsOptions(rank_images=None))
    for name, s in limited.layers.items():
        if s.rank_sum is None:  # no maps
            assert s.n_rank_images is None
            continue
        assert int(s.n_rank_images) == 7 and int(s.n_images) == 12
        torch.testing.assert_close(s.rank_sum, only_first.layers[name].rank_sum, rtol=0, atol=0)
        # everything but the ranks still covers every image
        assert torch.equal(s.hist, everything.layers[name].hist)
        torch.testing.assert_close(s.gram, everything.layers[name].gram, rtol=0, atol=0)
    for group in space.groups:
        torch.testing.assert_close(limited.channel_rank(group), only_first.channel_rank(group))
        torch.testing.assert_close(limited.channel_relative_rank(group), only_first.channel_relative_rank(group))
    # a limit past the pass ranks every image
    assert_same(accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=100)), everything)


def test_shards_with_offsets_merge_to_one_pass(tiny_resnet, space, batches):
    edges = compute_histogram_edges(tiny_resnet, space.groups, batches[:1])
    one_pass = accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=7))
    # shards: images 0-5 (all ranked), 6-8 (one ranked), 9-11 (none ranked)
    shards = [(batches[:2], 0), (batches[2:3], 6), (batches[3:], 9)]
    parts = [accumulate_stats(tiny_resnet, space.groups, b, edges,
                              StatsOptions(rank_images=7), image_offset=o) for b, o in shards]
    assert [int(p.layers["layer1.bn1"].n_rank_images) for p in parts] == [6, 1, 0]
    assert_same(parts[0].merge(parts[1]).merge(parts[2]), one_pass)
    assert_same(parts[2].merge(parts[0]).merge(parts[1]), one_pass)  # merge order does not matter
    with pytest.raises(InputError, match="no image's maps were ranked"):
        parts[2].channel_rank(space.groups[0])


def test_collect_defaults_to_rank_images(tiny_resnet, space):
    g = torch.Generator().manual_seed(3)
    big = [(torch.randn(RANK_IMAGES // 2 + 3, 1, 8, 8, generator=g), None) for _ in range(2)]
    stats = collect_activation_stats(tiny_resnet, space.groups, big, StatsOptions(rank=True))
    assert {int(s.n_rank_images) for s in stats.layers.values() if s.rank_sum is not None} == {RANK_IMAGES}
    assert {int(s.n_images) for s in stats.layers.values()} == {RANK_IMAGES + 6}
    without = collect_activation_stats(tiny_resnet, space.groups, big, StatsOptions(rank=False))
    assert all(s.n_rank_images is None for s in without.layers.values())
    merged = without.merge(without)  # no ranks on either side: none merged
    assert all(s.n_rank_images is None and s.rank_sum is None for s in merged.layers.values())
    assert {int(s.n_images) for s in merged.layers.values()} == {2 * RANK_IMAGES + 12}


def test_file_without_n_rank_images_reads_as_every_image_ranked(tiny_resnet, space, batches, tmp_path):
    stats = collect_activation_stats(tiny_resnet, space.groups, batches, StatsOptions(rank_images=None))
    path = tmp_path / "old.pt"
    stats.save(path)
    payload = torch.load(path, weights_only=True)
    for tensors in payload["layers"].values():
        tensors.pop("n_rank_images", None)  # as written before the field existed
    torch.save(payload, path)
    old = ActivationStats.load(path)
    for group in space.groups:
        torch.testing.assert_close(old.channel_rank(group), stats.channel_rank(group), rtol=0, atol=0)
        torch.testing.assert_close(old.channel_relative_rank(group), stats.channel_relative_rank(group))
    # and it merges with a state collected now
    edges = {name: s.edges for name, s in stats.layers.items()}
    new = accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=None))
    assert_same(old.merge(new), stats.merge(new))
    # a file written now round-trips the field
    limited = collect_activation_stats(tiny_resnet, space.groups, batches, StatsOptions(rank_images=5))
    limited.save(path)
    assert_same(ActivationStats.load(path), limited)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_bad_rank_images_is_named(tiny_resnet, space, batches, bad):
    edges = compute_histogram_edges(tiny_resnet, space.groups, batches[:1])
    for call in (lambda: collect_activation_stats(tiny_resnet, space.groups, batches, StatsOptions(rank_images=bad)),
                 lambda: accumulate_stats(tiny_resnet, space.groups, batches, edges, StatsOptions(rank_images=bad))):
        with pytest.raises(InputError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "rank_images" in message and repr(bad) in message


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_image_offset_is_named(tiny_resnet, space, batches, bad):
    edges = compute_histogram_edges(tiny_resnet, space.groups, batches[:1])
    with pytest.raises(InputError, match=f"image_offset .*{bad!r}"):
        accumulate_stats(tiny_resnet, space.groups, batches, edges, image_offset=bad)


def test_cli_default_is_the_library_default():
    from orchestrator.cli import stats

    assert stats.RANK_IMAGES == RANK_IMAGES
