"""What the engine cannot handle is refused up front in one line, or excluded and named."""
from __future__ import annotations

import threading
import time

import pytest
import torch
import torchvision
from torch import nn

from pruning.criteria import create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import (
    PreparationBudget, PreparationBudgetError, PruningError, PruningSpace, UnsupportedStructureError)
from pruning.structure.limits import within_budget


def test_channel_shuffle_is_refused_naming_the_layer():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    with pytest.raises(UnsupportedStructureError) as raised:
        PruningSpace.build(model, torch.randn(1, 3, 32, 32))
    message = str(raised.value)
    assert "cannot be traced for pruning after layer 'stage" in message and "\n" not in message
    assert isinstance(raised.value, PruningError)


class GhostLike(nn.Module):
    """GhostNet's module: two halves concatenated, sliced, then added to a full-width shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.primary = nn.Conv2d(8, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.mix = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        primary = self.primary(x)
        ghost = torch.cat([primary, self.cheap(primary)], 1)[:, :8]
        x = x + ghost
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


def test_groups_joined_from_unequal_widths_are_excluded_and_the_rest_prunes():
    model, x = GhostLike().eval(), torch.randn(2, 3, 16, 16)
    space = PruningSpace.build(model, x)
    excluded = {e.layer: e.reason for e in space.excluded}
    assert "stem" in excluded and "joined from layers of other widths" in excluded["stem"]
    assert "stem" not in {g.name for g in space.groups}
    outcome = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(ratio=0.5), space=space)
    assert outcome.keep["mix"] == 6 and outcome.model(x).shape == (2, 10)


def test_an_overrun_of_the_time_budget_stops_the_work_in_one_line():
    start = time.monotonic()
    with pytest.raises(PreparationBudgetError) as raised:
        with within_budget(PreparationBudget(seconds=0.2), "preparing M for pruning"):
            while time.monotonic() - start < 10:
                time.sleep(0.01)
    message = str(raised.value)
    assert time.monotonic() - start < 5 and "budget of 0.2 s" in message and "PRUNESWEEP_PREPARE_SECONDS" in message
    assert "\n" not in message and threading.active_count() >= 1


def test_an_overrun_of_the_memory_budget_stops_the_work():
    hoard = []
    with pytest.raises(PreparationBudgetError, match="GiB more memory"):
        with within_budget(PreparationBudget(memory_gb=0.05), "preparing M for pruning"):
            for _ in range(1000):  # at most 1 GiB, far past the budget
                hoard.append(torch.ones(2**18))
                time.sleep(0.001)
    assert len(hoard) < 1000


def test_budget_from_environment_and_its_validation():
    assert PreparationBudget.from_environment({"PRUNESWEEP_PREPARE_SECONDS": "5"}) == PreparationBudget(seconds=5.0)
    with pytest.raises(ValueError, match="PRUNESWEEP_PREPARE_MEMORY_GB must be a number"):
        PreparationBudget.from_environment({"PRUNESWEEP_PREPARE_MEMORY_GB": "lots"})
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        PreparationBudget(seconds=0)
    with within_budget(PreparationBudget(), "preparing M for pruning"):
        pass  # within budget: nothing raised, the watchdog is gone
