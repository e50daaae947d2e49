"""The contract every model family meets: what prunes also reloads, runs and exports.

Per family (random init, seeded, small inputs, 10 classes), the path of ``prunesweep prune``
then ``eval`` then ``export``: the up-front prunability check, L1 pruning to -50% MACs through
the product's planning, a checkpoint saved and reloaded by name with the pruned model's
outputs, and a checked ONNX export. The pruned MACs (measured on the executed ops) must be
within one point of the target.

Families marked ``refusable`` (grouped convs, attention, channel shuffles, ghost modules) may
instead be refused with a one-line :class:`~pruning.errors.InputError` naming a layer, when the
prunability check or the pruning runs; never with another exception, and never once pruned.

The full-size ``resnext50_32x4d`` / ``convnext_tiny`` are represented by small configurations of
the same blocks (``family_models``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from pruning.criteria import create_criterion
from pruning.errors import InputError
from pruning.export import CheckBatch, export_model
from pruning.models import create_model
from pruning.structure.prunable import check_prunable
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import ModelSpec, count_macs, load_checkpoint, save_checkpoint

TARGET = 0.5
#: how far the measured MAC reduction may be from the target
TOLERANCE = 0.01
CLASSES = 10


@dataclass(frozen=True)
class Family:
    """A model by name (and options), the image size it runs at, and whether a one-line refusal
    is an accepted outcome."""

    name: str
    size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    refusable: bool = False

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"Family.size must be >= 8, got {self.size}")

    @property
    def id(self) -> str:
        return self.name.rpartition(":")[2]


FAMILIES = [
    Family("torchvision:resnet18"),
    Family("torchvision:mobilenet_v2"),
    Family("torchvision:mobilenet_v3_small"),
    Family("torchvision:mnasnet0_5"),
    Family("torchvision:squeezenet1_0", size=48),
    Family("torchvision:efficientnet_b0"),
    Family("torchvision:efficientnet_v2_s"),
    Family("torchvision:regnet_x_400mf"),
    Family("family_models:convnext_tiny_blocks"),
    Family("family_models:resnext_tiny", refusable=True),
    Family("torchvision:shufflenet_v2_x0_5", refusable=True),
    Family("torchvision.models:VisionTransformer", refusable=True, kwargs=dict(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)),
    Family("timm:convnext_nano", kwargs=dict(depths=[1, 1, 1, 1])),
    Family("timm:ghostnet_100", refusable=True),
    Family("timm:deit_tiny_patch16_224", refusable=True, kwargs=dict(img_size=32, patch_size=8, depth=2)),
]


def _one_line_naming_a_layer(err: InputError, model: torch.nn.Module) -> None:
    message = str(err)
    assert message and "\n" not in message, message
    layers = [name for name, _ in model.named_modules() if name]
    assert any(f"'{name}'" in message for name in layers), f"names no layer: {message}"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.id)
def test_pruned_model_reloads_runs_and_exports(family: Family, tmp_path):
    torch.manual_seed(0)
    shape = (3, family.size, family.size)
    model = create_model(family.name, num_classes=CLASSES, in_channels=3, **family.kwargs).eval()
    example = torch.zeros(1, *shape)
    try:
        space = check_prunable(model, shape, f"model {family.name!r}")
        outcome = prune_with_criterion(model, example, create_criterion("l1"), PruningConfig(flops_reduction=TARGET),
                                       space=space)
    except InputError as err:
        if not family.refusable:
            raise
        _one_line_naming_a_layer(err, model)
        return
    pruned = outcome.model.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    reduction = 1 - count_macs(pruned, x) / count_macs(model, x)
    assert abs(reduction - TARGET) <= TOLERANCE, f"measured MAC reduction {reduction:.4f}"

    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, ModelSpec(family.name, CLASSES, 3, shape, kwargs=family.kwargs))
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    check = export_model(loaded, shape, tmp_path / "pruned.onnx", "onnx", check=CheckBatch(size=2))
    assert check.passed
