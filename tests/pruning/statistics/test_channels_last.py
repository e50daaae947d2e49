"""Channels-last activations (ConvNeXt's Linear/LayerNorm on (N, H, W, C), ViT's (N, T, C) tokens)
are read with their channels in the last dim."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.criteria import ScoringContext, create_criterion
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor (torchvision's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LastBlock(nn.Module):
    """Conv2d -> permute -> LayerNorm -> Linear -> GELU -> Linear -> permute, as ConvNeXt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.up = nn.Linear(6, 12)
        self.act = nn.GELU()
        self.down = nn.Linear(12, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.act(self.up(self.norm(self.conv(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class FirstBlock(nn.Module):
    """The same computation on (N, C, H, W) tensors: 1x1 convolutions instead of the Linears."""

    def __init__(self, last: LastBlock) -> None:
        super().__init__()
        self.conv = last.conv
        self.norm = ChannelLayerNorm(6)
        self.norm.load_state_dict(last.norm.state_dict())
        self.up, self.down = nn.Conv2d(6, 12, 1), nn.Conv2d(12, 5, 1)
        for conv, linear in ((self.up, last.up), (self.down, last.down)):
            conv.weight.data = linear.weight.data[:, :, None, None].clone()
            conv.bias.data = linear.bias.data.clone()
        self.act, self.head = nn.GELU(), last.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(self.act(self.up(self.norm(self.conv(x))))).mean((2, 3)))


class Tokens(nn.Module):
    """A ViT-like MLP on (N, T, C) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.norm(self.embed(x)))).mean(1))


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 1, 9, 7, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(3)]


def stats_of(model, batches, **options):
    model = model.double()
    space = PruningSpace.build(model, batches[0][0][:1].double())
    double = [(x.double(), y) for x, y in batches]
    return space, collect_activation_stats(model, space.groups, double,
                                           StatsOptions(chip=True, map_entropy=True, **options))


@pytest.mark.parametrize("value", ["gap", "spatial"])
def test_channels_last_block_reads_like_the_channels_first_one(batches, value):
    torch.manual_seed(0)
    last = LastBlock()
    first = FirstBlock(last)
    last_space, last_stats = stats_of(last, batches, value=value)
    first_space, first_stats = stats_of(first, batches, value=value)
    assert last_stats.layers.keys() == first_stats.layers.keys()
    widths = {g.name: g.size for g in last_space.groups}
    assert widths == {g.name: g.size for g in first_space.groups}
    for name, a in last_stats.layers.items():
        b = first_stats.layers[name]
        assert a.channels == b.channels and a.map_size.tolist() == [9, 7], name
        for field, x in a.tensors().items():
            y = b.tensors()[field]
            if x.is_floating_point():
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=f"{name}.{field}")
            else:
                assert torch.equal(x, y), f"{name}.{field}"
    assert last_stats.layers["up"].channels == 12
    up = next(g for g in last_space.groups if g.name == "up")
    for criterion in ("entropy", "hrank", "apoz", "chip"):
        scores = create_criterion(criterion).score(last, [up], ScoringContext(stats=last_stats))
        assert scores["up"].shape == (12,)


def test_tokens_are_images_of_positions_without_ranks():
    torch.manual_seed(0)
    model = Tokens()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 5, 4, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    space = PruningSpace.build(model, batches[0][0][:1])
    stats = collect_activation_stats(model, space.groups, batches, StatsOptions(value="spatial"))
    fc = stats.layers["fc"]
    assert fc.channels == 8 and fc.map_size.tolist() == [5, 1]
    assert int(fc.n_images) == 8 and int(fc.n_positions) == 40
    assert fc.rank_sum is None
    acts = torch.cat([torch.relu(model.fc(model.norm(model.embed(x)))) for x, _ in batches]).detach()
    torch.testing.assert_close(fc.sum, acts.mean(1).sum(0).double())
    assert torch.equal(fc.zeros, (acts == 0).sum((0, 1)))
    fc_group = next(g for g in space.groups if g.name == "fc")
    hrank = create_criterion("hrank").score(model, [fc_group], ScoringContext(stats=stats))["fc"]
    torch.testing.assert_close(hrank.double(), 1 - fc.zeros.double() / 40)


@pytest.mark.parametrize("criterion", ["entropy", "hrank", "shapley", "snpfi"])
def test_torchvision_convnext_blocks_prune_by_their_statistics_and_games(criterion):
    from family_models import convnext_tiny_blocks
    from pruning.pipeline import prune_with_criterion
    from pruning.planning import PruningConfig
    from pruning.structure import count_macs

    torch.manual_seed(0)
    model = convnext_tiny_blocks().eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    space = PruningSpace.build(model, x[:1])
    stats = collect_activation_stats(model, space.groups, [(x, torch.arange(16) % 10)],
                                     StatsOptions(rank=criterion == "hrank", read_inputs=True))
    assert all(stats.layers[o.key].channels == g.size for g in space.groups for o in g.observed)
    outcome = prune_with_criterion(model, x[:1], create_criterion(criterion), PruningConfig(flops_reduction=0.5),
                                   ScoringContext(calibration=[(x, torch.arange(16) % 10)], stats=stats), space=space)
    assert outcome.model(x).shape == (16, 10)
    assert abs(1 - count_macs(outcome.model, x) / count_macs(model, x) - 0.5) <= 0.01
