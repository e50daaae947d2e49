"""Checks a sweep or study makes from its config before trials start, naming the key at fault."""
from __future__ import annotations

import pytest

from orchestrator.experiment import ConfigError
from orchestrator.experiment.baseline import StatsWorkers
from orchestrator.experiment.experiment import check_cluster_cpus
from orchestrator.experiment.runner import TrialResources


def test_statistics_actors_fit_the_cluster_and_a_trial_larger_than_it_is_refused(ray_session):
    cpus = ray_session.cluster_resources()["CPU"]
    assert StatsWorkers(64, 1).within_cluster().count == int(cpus)
    assert StatsWorkers(1, 1).within_cluster().count == 1
    assert StatsWorkers(64, cpus * 4).within_cluster().count == 1
    check_cluster_cpus(TrialResources(cpus, 0, 64), "sweep")  # a concurrency beyond the cluster only queues
    with pytest.raises(ConfigError, match=r"sweep.cpus_per_trial: is 64 but the Ray cluster has"):
        check_cluster_cpus(TrialResources(64, 0, 1), "sweep")
