"""Checkpoints rebuild every layer type whose width changes: norms over channels in any layout
(LayerNorm2d, channels-last LayerNorm, GroupNorm, BatchNorm), grouped and depthwise convs,
layer-scale parameters and attention heads; and files written before layouts still load."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pruning.criteria import create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import CheckpointError, ModelSpec, load_checkpoint, model_layout, save_checkpoint

timm_layers = pytest.importorskip("timm.layers")


class NormZoo(nn.Module):
    """One of each layer a width change reaches: LayerNorm2d, a depthwise conv, GroupNorm, a
    grouped conv with a (C, 1, 1) layer scale, then tokens: Linear, channels-last LayerNorm, a
    (C,) layer scale and timm's Attention."""

    def __init__(self, width: int = 8, groups: int = 4, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.ln2d = timm_layers.LayerNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.gn = nn.GroupNorm(groups, width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.gamma = nn.Parameter(torch.rand(width, 1, 1))
        self.fc = nn.Linear(width, 2 * width)
        self.ln = nn.LayerNorm(2 * width)
        self.layer_scale = nn.Parameter(torch.rand(2 * width))
        self.attn = timm_layers.Attention(2 * width, num_heads=heads)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln2d(self.stem(x))
        x = self.gn(self.dw(x))
        x = x + self.gamma * self.grouped(x)
        tokens = self.layer_scale * self.ln(self.fc(x.flatten(2).transpose(1, 2)))
        tokens = tokens + self.attn(tokens)
        return self.head(tokens.mean(1))


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter (norm weights and biases too: ones and zeros hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def test_every_narrowed_layer_type_is_rebuilt_from_the_checkpoint(tmp_path):
    """Saved at half the width, a quarter of the groups and one attention head; reloaded into a
    model built at full width: shapes, attributes and outputs are the saved model's."""
    saved = _randomised(NormZoo(width=4, groups=1, heads=1), 0)
    path = tmp_path / "zoo.pt"
    save_checkpoint(path, saved, ModelSpec(None, 10, 3, (3, 6, 6)))
    loaded, spec = load_checkpoint(path, NormZoo())
    assert (loaded.grouped.groups, loaded.grouped.in_channels, loaded.dw.groups) == (1, 4, 4)
    assert (loaded.gn.num_groups, loaded.gn.num_channels) == (1, 4)
    assert loaded.ln2d.normalized_shape == (4,) and loaded.ln.normalized_shape == (8,)
    assert (loaded.attn.num_heads, loaded.attn.head_dim, loaded.attn.scale) == (1, 8, 8 ** -0.5)
    assert loaded.gamma.shape == (4, 1, 1) and loaded.layer_scale.shape == (8,)
    assert model_layout(loaded) == model_layout(saved) == spec.layout
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))


def test_pruned_convnext_reloads_by_name(tmp_path):
    """A small timm ConvNeXt (LayerNorm2d stem, channels-last LayerNorm blocks, layer scale
    ``gamma``) pruned by half its MACs, reloaded by import path."""
    name, kwargs = "timm.models.convnext:ConvNeXt", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "ls_init_value": 0.5}
    torch.manual_seed(0)
    from pruning.models import create_model

    model = _randomised(create_model(name, num_classes=10, in_channels=3, **kwargs), 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="Unwrapped parameters"):  # torch-pruning narrows `gamma` by its last dim
        pruned = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(flops_reduction=0.5)).model
    assert pruned.stem[1].normalized_shape != model.stem[1].normalized_shape  # the stem's norm was narrowed
    save_checkpoint(tmp_path / "convnext.pt", pruned, ModelSpec(name, 10, 3, (3, 32, 32), kwargs=kwargs))
    loaded, _ = load_checkpoint(tmp_path / "convnext.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_checkpoint_without_layout_still_loads(tmp_path):
    """A ``prunesweep-checkpoint/1`` file (Conv2d/Linear/BatchNorm widths only) of a pruned CNN."""
    from test_checkpoint import SPEC, pruned_resnet20

    model, x = pruned_resnet20()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, SPEC)
    payload = torch.load(path, weights_only=True)
    spec = json.loads(payload["spec"])
    del spec["layout"]
    spec["format"] = "prunesweep-checkpoint/1"
    torch.save({**payload, "spec": json.dumps(spec)}, path)
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class WithPositions(nn.Module):
    """A buffer that is not saved with the weights (like a position index) sized by the width."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 2)
        self.register_buffer("positions", torch.arange(width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.positions)


def test_layout_mismatches_raise_one_line_errors(tmp_path):
    save_checkpoint(tmp_path / "narrow.pt", WithPositions(2), ModelSpec(None, 2, 1, (1, 2, 2)))
    with pytest.raises(CheckpointError, match=r"^buffer 'positions' is not saved with the weights .*\[2\]"):
        load_checkpoint(tmp_path / "narrow.pt", WithPositions(4))
    save_checkpoint(tmp_path / "zoo.pt", NormZoo(), ModelSpec(None, 10, 3, (3, 6, 6)))
    with pytest.raises(CheckpointError, match=r"^checkpoint layers not found in the model: attn, "):
        load_checkpoint(tmp_path / "zoo.pt", WithPositions(4))
    with pytest.raises(CheckpointError, match=r"^ModelSpec.layout of module 'fc' has a tensor shape"):
        ModelSpec(None, 10, 3, (3, 6, 6), layout={"fc": {"attributes": {}, "tensors": {"weight": "big"}}})
