"""Fixtures shared by the orchestrator tests: one Ray runtime for the whole test session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """Ray started once per test session (starting it costs seconds), two CPUs, no dashboard."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started_here:
        ray.shutdown()
