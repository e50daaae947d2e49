"""The GPU keys of a sweep config (``sweep.gpus_per_trial``, ``sweep.gpus_per_worker``) and of a
comparison (``gpus_per_trial``): validated with their key path; no Ray, milliseconds."""
from __future__ import annotations

import pytest
import yaml

from orchestrator.experiment import ConfigError
from orchestrator.sweeps import SweepConfig, dump_sweep_config, load_sweep_config

BASE = {"checkpoint": "base.pt", "space": {"name": "uniform"}}


def sweep_with(**values) -> SweepConfig:
    return SweepConfig.from_dict({**BASE, "sweep": values})


@pytest.mark.parametrize("key", ["gpus_per_trial", "gpus_per_worker"])
@pytest.mark.parametrize("value, reason", [
    (-1, "must be >= 0, got -1"),
    (-0.25, "must be >= 0, got -0.25"),
    ("one", "must be a finite number, got 'one'"),
    (True, "must be a finite number, got True"),
    (float("nan"), "must be a finite number"),
])
def test_bad_gpu_values_name_their_key(key, value, reason):
    with pytest.raises(ConfigError) as info:
        sweep_with(**{key: value})
    message = str(info.value)
    assert message.startswith(f"sweep.{key}: {reason}"), message
    assert "\n" not in message


def test_gpu_defaults_fractions_and_round_trip(tmp_path):
    default = sweep_with()
    assert default.sweep.gpus_per_trial == 0 and default.sweep.gpus_per_worker == 0
    # a CPU sweep's resolved config (its MLflow params) is what it was before GPUs existed
    assert "gpus_per_trial" not in default.to_dict()["sweep"] and "gpus_per_worker" not in default.to_dict()["sweep"]
    config = sweep_with(gpus_per_trial=0.25, gpus_per_worker=1)
    assert config.sweep.gpus_per_trial == 0.25 and config.sweep.gpus_per_worker == 1
    resolved = config.to_dict()["sweep"]
    assert resolved["gpus_per_trial"] == 0.25 and resolved["gpus_per_worker"] == 1
    assert SweepConfig.from_dict(yaml.safe_load(dump_sweep_config(config))) == config
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_sweep_config(path, {"sweep.gpus_per_trial": 0.5}).sweep.gpus_per_trial == 0.5
    with pytest.raises(ConfigError, match=r"^sweep.gpus_per_trial: must be >= 0"):
        load_sweep_config(path, {"sweep.gpus_per_trial": -2})


def test_gpus_beyond_the_ray_cluster_are_refused_up_front(monkeypatch):
    """What ``run_sweep`` checks once Ray is up (and the actor pool before starting actors),
    against a cluster that reports no GPU (``ray.cluster_resources`` stubbed: no Ray started)."""
    import ray

    from orchestrator.distributed.pool import check_gpus
    from orchestrator.experiment.experiment import check_cluster_gpus
    from pruning.errors import InputError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    check_cluster_gpus(sweep_with().gpu_requests())  # no GPUs asked for: fine
    check_gpus(2, 0)
    with pytest.raises(ConfigError) as info:
        check_cluster_gpus(sweep_with(gpus_per_trial=0.5).gpu_requests())
    assert str(info.value) == "sweep.gpus_per_trial: is 0.5 but the Ray cluster has 0 GPU(s); use 0 to run on CPUs"
    with pytest.raises(ConfigError, match=r"^sweep.gpus_per_worker: is 1 but the Ray cluster has 0 GPU"):
        check_cluster_gpus(sweep_with(gpus_per_worker=1).gpu_requests())
    with pytest.raises(InputError, match="gpus_per_worker is 0.5 but the Ray cluster has no GPU"):
        check_gpus(2, 0.5)
    with pytest.raises(InputError, match="gpus_per_worker must be a number >= 0"):
        check_gpus(2, -1)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    check_cluster_gpus(sweep_with(gpus_per_trial=0.5, gpus_per_worker=1).gpu_requests())
    check_gpus(4, 0.25)
    with pytest.raises(ConfigError, match="is 2 but the Ray cluster has 1 GPU"):
        check_cluster_gpus(sweep_with(gpus_per_trial=2).gpu_requests())
