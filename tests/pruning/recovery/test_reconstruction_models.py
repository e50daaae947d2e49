"""The streamed reconstruction pass on models whose fx graph is not a plain function of the
images: a transformer with optional arguments (timm's attention mask), and a model whose traced
graph differs from its forward; each gives the fit of one pass over every image."""
from __future__ import annotations

import copy

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pruning.criteria import create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import consumers_of, kept_outputs_of, reconstruct_consumers

X = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class TracedDifferently(nn.Module):
    """Scales its hidden maps by 2, but by 1 while fx traces it: its graph is not its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if torch.fx._symbolic_trace.is_fx_tracing() else 2.0
        return self.head(self.mix(torch.relu(self.stem(x)) * scale).mean((2, 3)))


def _streamed_equals_one_pass(model: nn.Module) -> dict:
    outcome = prune_with_criterion(model, X[:1], create_criterion("l1"), PruningConfig(flops_reduction=0.4))
    layers = consumers_of(outcome.space, outcome.kept_indices)
    options = dict(kept_outputs=kept_outputs_of(outcome.space, outcome.kept_indices))
    streamed, whole = outcome.model, copy.deepcopy(outcome.model)
    batches = [(X[:12], None), (X[12:], None)]
    reports = reconstruct_consumers(model, streamed, layers, batches, memory_mib=0, **options)
    reconstruct_consumers(model, whole, layers, batches, memory_mib=None, **options)
    for (name, a), b in zip(streamed.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    return reports


def test_a_transformer_with_optional_arguments_streams_like_one_pass():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10).eval()
    reports = _streamed_equals_one_pass(model)
    assert any(r.status == "refit" for r in reports.values())


def test_a_graph_that_differs_from_the_forward_falls_back_to_one_pass():
    torch.manual_seed(0)
    reports = _streamed_equals_one_pass(TracedDifferently().eval())
    assert reports["mix"].status == "refit"
