"""Transformers: attention heads prune whole, MLP hidden units prune, the token width stays."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from pruning.criteria import ScoringContext, create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace, UnitLayout, count_macs

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    model = TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10).eval()
    return model, PruningSpace.build(model, X)


def test_heads_are_units_and_the_token_width_is_excluded(timm_vit):
    _, space = timm_vit
    qkv = space["blocks.0.attn.qkv"]
    assert qkv.size == 192 and qkv.units == UnitLayout(blocks=3, run=16) and qkv.consumers == ("blocks.0.attn.proj",)
    assert space.heads == {"blocks.0.attn.qkv": "blocks.0.attn", "blocks.1.attn.qkv": "blocks.1.attn"}
    assert [e.layer for e in space.excluded] == ["patch_embed.proj"]
    assert "token width" in space.excluded[0].reason


@pytest.mark.parametrize("criterion", ["l1", "taylor", "random"])
def test_pruned_vit_removes_whole_heads_and_meets_the_target(criterion, timm_vit):
    model, space = timm_vit
    context = ScoringContext(calibration=[(X, torch.tensor([1, 2]))])
    outcome = prune_with_criterion(model, X, create_criterion(criterion), PruningConfig(flops_reduction=0.5),
                                   context, space=space)
    pruned = outcome.model
    assert pruned(X).shape == (2, 10)
    measured = count_macs(pruned, X)
    assert space.macs(outcome.keep) == measured
    assert abs(1 - measured / count_macs(model, X) - 0.5) <= 0.01
    for i, block in enumerate(pruned.blocks):
        attention, original = block.attn, model.blocks[i].attn
        assert attention.qkv.out_features == 3 * attention.num_heads * 16 == 3 * attention.attn_dim
        assert attention.proj.in_features == attention.attn_dim
        heads = outcome.kept_indices.get(f"blocks.{i}.attn.qkv")
        if heads is None:
            continue
        q_rows = heads[heads < 64]
        whole = q_rows.view(-1, 16)
        assert torch.equal(whole, whole[:, :1] + torch.arange(16)) and torch.equal(whole[:, 0] % 16, torch.zeros(len(whole), dtype=torch.long))
        assert torch.equal(attention.proj.weight, original.proj.weight[:, q_rows])
    assert any(b.attn.num_heads < 4 for b in pruned.blocks) or outcome.keep["blocks.0.mlp.fc1"] < 256


@pytest.mark.parametrize("criterion", ["entropy", "apoz", "hrank"])
def test_statistics_criteria_score_token_channels_and_prune(criterion, timm_vit):
    model, space = timm_vit
    batches = [(X, torch.tensor([1, 2]))]
    stats = collect_activation_stats(model, space.groups, batches, StatsOptions(rank=criterion == "hrank"))
    assert all(stats.channel_mean(g).shape == (g.size,) for g in space.groups)
    context = ScoringContext(calibration=batches, stats=stats)
    outcome = prune_with_criterion(model, X, create_criterion(criterion), PruningConfig(flops_reduction=0.5),
                                   context, space=space)
    assert outcome.model(X).shape == (2, 10)
    assert abs(1 - count_macs(outcome.model, X) / count_macs(model, X) - 0.5) <= 0.01


def test_torchvision_vit_keeps_heads_and_prunes_its_mlps():
    torch.manual_seed(0)
    model = TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                           mlp_dim=128, num_classes=10).eval()
    space = PruningSpace.build(model, X)
    assert [g.name for g in space.groups] == ["encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"]
    reasons = {e.layer: e.reason for e in space.excluded}
    assert "fused in_proj" in reasons["encoder.layers.encoder_layer_0.self_attention"]
    assert space.base_macs == count_macs(model, X)
    outcome = prune_with_criterion(model, X, create_criterion("l1"), PruningConfig(flops_reduction=0.3), space=space)
    assert outcome.model(X).shape == (2, 10)
    measured = count_macs(outcome.model, X)
    assert space.macs(outcome.keep) == measured and abs(1 - measured / count_macs(model, X) - 0.3) <= 0.01
