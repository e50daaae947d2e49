"""The "scoring" bar of the criteria that run the model: on stderr with
``ScoringContext(progress=True)``, absent without it, and the scores the same either way."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.structure import PruningSpace


@pytest.mark.parametrize("name", ["taylor", "shapley", "snpfi"])
def test_scoring_bar_only_with_progress(name, tiny_cnn, example_input, calibration_batches, capsys):
    groups = PruningSpace.build(tiny_cnn, example_input).groups
    scores = {}
    for progress in (False, True):
        context = ScoringContext(calibration=calibration_batches, progress=progress)
        scores[progress] = create_criterion(name, seed=0).score(tiny_cnn, groups, context)
        err = capsys.readouterr().err
        assert ("scoring: " in err) == progress
    for group in groups:
        torch.testing.assert_close(scores[True][group.name], scores[False][group.name], rtol=0, atol=0)
