"""Taylor scores take each batch's gradient over slices of it: the same scores, whatever the slice."""
from __future__ import annotations

import torch

import pruning.criteria.taylor as taylor
from pruning.criteria import ScoringContext, create_criterion
from pruning.structure import PruningSpace


def test_the_scores_do_not_depend_on_the_images_per_backward(tiny_resnet, example_input, monkeypatch):
    space = PruningSpace.build(tiny_resnet, example_input)
    g = torch.Generator().manual_seed(0)
    calibration = [(torch.randn(40, *example_input.shape[1:], generator=g), torch.arange(40) % 10) for _ in range(2)]
    context = ScoringContext(calibration=calibration)
    scores = {}
    for images in (1000, 7):
        monkeypatch.setattr(taylor, "BACKWARD_IMAGES", images)
        scores[images] = create_criterion("taylor", image_fraction=1.0).score(tiny_resnet, space.groups, context)
    for name, whole in scores[1000].items():
        torch.testing.assert_close(scores[7][name], whole, rtol=1e-4, atol=1e-12)
    assert any(bool(s.abs().sum() > 0) for s in scores[7].values())
