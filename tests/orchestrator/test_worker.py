"""What the driver shares with the workers of a sweep (orchestrator.experiment.worker)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from orchestrator.experiment.worker import WorkerSettings, fetch_baseline, put_shared
from pruning.recovery import RecoveryRecipe, consumers_of
from pruning.structure import ModelSpec, PruningSpace


def test_the_reconstruction_targets_are_put_once_for_every_trial(ray_session, tiny_resnet):
    """With a reconstructing recipe the driver puts the targets of every layer a trial may refit,
    drawn with the recipe's rows and seed; without reconstruction there are none."""
    space = PruningSpace.build(tiny_resnet, torch.zeros(1, 1, 28, 28))
    batches = [(torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.zeros(32, dtype=torch.long))]
    setup = SimpleNamespace(model=tiny_resnet, spec=ModelSpec("tiny", 10, 1, (1, 28, 28)), space=space, batches=batches)
    recipe = RecoveryRecipe(reconstruct_rows=8, seed=3)
    fetched = fetch_baseline(put_shared(setup, None, None, recipe), WorkerSettings(None, (1, 28, 28), 1))
    assert set(fetched.targets.layers) == set(consumers_of(space, [g.name for g in space.groups]))
    assert fetched.targets.seed == 3 and fetched.targets.budget.min_rows_per_column == 8
    assert put_shared(setup, None, None, RecoveryRecipe(reconstruct=False)).targets is None
    assert put_shared(setup, None, None).targets is None
