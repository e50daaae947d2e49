"""Fixtures shared by the orchestrator tests: one Ray runtime for the whole test session."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def lock_holder():
    """``lock_holder(run_dir)``: another process that takes the run dir's lock and holds it until
    the test ends (or is killed); returns its ``Popen``."""
    processes = []

    def hold(run_dir: Path) -> subprocess.Popen:
        code = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from orchestrator.experiment.lock import RunDirLock
            lock = RunDirLock({str(run_dir)!r}).acquire()
            print("held", flush=True)
            time.sleep(120)
        """)
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def finished_sweep(ray_session, trained_resnet20, tmp_path_factory):
    """A finished 2-trial sweep (uniform space, no fine-tuning) in its own run directory, with
    its default SQLite store inside; its SweepConfig. Tests copy it rather than change it."""
    from orchestrator.sweeps import SweepConfig, run_sweep
    from sweep_helpers import sweep_config

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    space = {"name": "uniform", "criteria": ["l1", "fpgm"], "finetune_epochs": [0, 0], "flops_bounds": [0.0, 0.95]}
    config = SweepConfig.from_dict(sweep_config(trained_resnet20["out"], run_dir, name="finished", space=space,
                                                trials=2, seed=0))
    run_sweep(config, progress=False)
    return config
