"""Fixtures of the search-space tests."""
from __future__ import annotations

import pytest

from search_spaces import SpaceContext
from space_helpers import build_contexts


@pytest.fixture
def contexts(tiny_resnet, example_input, calibration_batches) -> dict[str, SpaceContext]:
    """One context per strategy on the conftest TinyResNet, with stats and utilization curves."""
    return build_contexts(tiny_resnet, example_input, calibration_batches)
