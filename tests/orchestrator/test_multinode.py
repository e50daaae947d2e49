"""The ``prunesweep`` command against a real two-node Ray cluster and a real MLflow server.

The cluster is started with Ray's own CLI (``ray start --head`` and ``ray start --address``),
two nodes on this machine, one CPU and one custom resource (``node_a``, ``node_b``) each, their
own temp dirs and ports on 127.0.0.1; the MLflow server is ``mlflow server`` with a sqlite store
and an artifact root in a temporary folder. Every command joins with ``--address`` (the host
network: a command given ``--address`` never enters the private namespace) and logs with
``--tracking-uri http://127.0.0.1:PORT``.

With one CPU per node, two concurrent one-CPU actors or trials cannot share a node: both nodes
work by construction, and the tests check it from what the runs record.

Both nodes share this machine's disk, so Tune's storage (the run directory) is a path every
node sees, as docs/cluster.md requires on a real cluster; what is checked is that a trial that
ran on the second node persisted its checkpoint there and that the driver logged the front's
models from it to the server.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cluster_helpers import RAY_ENV, MlflowServer, RayCluster, free_port
from orchestrator.distributed import network as private_network
from orchestrator.distributed import relay
from orchestrator.experiment import TAG_PARETO, Tracker
from pruning.models import create_model
from pruning.statistics import ActivationStats

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900
TINY_DATA = {"calibration_images": 64, "batch_size": 64}
TINY_RECIPE = {"bn_batches": 2, "batch_size": 64, "finetune_subset": 64}
SPACE = {"name": "uniform", "criteria": ["l1", "fpgm"], "finetune_epochs": [0, 0], "flops_bounds": [0.0, 0.95]}
#: three 128-image batches -> three one-batch shards: the first actor takes two (two in flight
#: per actor), the second the third, so both nodes run shards
STATS_IMAGES = "384"


def _mount_namespaces_allowed() -> bool:
    """The second node hides a folder in its own mount namespace (``unshare --user --mount``)."""
    import subprocess

    try:
        return subprocess.run(["unshare", "--user", "--map-current-user", "--mount", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not _mount_namespaces_allowed():
        pytest.skip("unprivileged user + mount namespaces are not allowed here (the second node's own disk needs them)")
    nodes = RayCluster(tmp_path_factory.mktemp("ray-cluster"))
    try:
        nodes.start()
        yield nodes
    finally:  # also when start() failed half-way: a started head must not outlive the test
        nodes.kill()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.kill()


def command_env() -> dict[str, str]:
    """This environment with the cluster's token auth and no inherited Ray address or namespace."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", private_network.ACTIVE_ENV, relay.RELAY_ENV)}
    return {**env, **RAY_ENV}


def prunesweep(*args: str) -> subprocess.CompletedProcess:
    """``python -m orchestrator.cli ARGS`` as a user's shell on the head node runs it."""
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=command_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.fashion_mnist
def test_stats_shards_run_on_both_nodes_and_equal_the_local_pass(cluster, tmp_path):
    # one set of weights for both runs: --model alone initialises at random in each process
    torch.manual_seed(0)
    weights = tmp_path / "resnet20.pt"
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), weights)
    common = ["stats", "--model", "resnet20", "--weights", str(weights), "--calibration-images", STATS_IMAGES,
              "--json", "--quiet"]
    joined = prunesweep(*common, "--workers", "2", "--address", cluster.address, "--out", str(tmp_path / "cluster.pt"))
    assert joined.returncode == 0, joined.stderr[-3000:]
    data = json.loads(joined.stdout)
    assert data["ray_network"] == "cluster" and data["workers"] == 2
    assert set(data["nodes"]) == {cluster.head.node_id, cluster.worker.node_id}, data["nodes"]
    assert sum(data["nodes"].values()) == 3  # every shard once

    local = prunesweep(*common, "--out", str(tmp_path / "local.pt"))
    assert local.returncode == 0, local.stderr[-3000:]
    assert json.loads(local.stdout)["nodes"] is None
    a, b = ActivationStats.load(tmp_path / "local.pt"), ActivationStats.load(tmp_path / "cluster.pt")
    assert a.config == b.config and a.layers.keys() == b.layers.keys()
    for name, x in a.layers.items():
        for field, t in x.tensors().items():
            u = getattr(b.layers[name], field)
            if t.is_floating_point():  # float sums merge in another order
                torch.testing.assert_close(u, t, rtol=1e-6, atol=1e-6, msg=f"{name}.{field}")
            else:  # counts and histograms: exact
                assert torch.equal(t, u), (name, field)


def trial_nodes(run_dir: Path, cluster: RayCluster) -> dict[str, str]:
    """Tune trial id -> the label of the node that ran it, from the worker pid in the trial's
    ``result.json`` and the worker log files in each node's own temp dir."""
    pids = {"node_a": cluster.head.worker_pids(), "node_b": cluster.worker.worker_pids()}
    assert not pids["node_a"] & pids["node_b"]
    found = {}
    for result in (run_dir / "tune").glob("*/result.json"):
        lines = result.read_text().strip().splitlines()
        if not lines:  # a trial lost before it reported: nothing says where it ran
            continue
        last = json.loads(lines[-1])
        found[last["trial_id"]] = next(label for label, known in pids.items() if last["pid"] in known)
    return found


def started_at(trial_folder: Path) -> float:
    """When Tune first started a trial: its TensorBoard event file is named at the trial's first
    logger call, a retry adds another (params.json is rewritten at the experiment's end: its
    mtime says nothing)."""
    events = list(trial_folder.glob("events.out.tfevents.*"))
    assert events, trial_folder
    return min(float(path.name.split(".")[3]) for path in events)


def write_sweep_config(folder: Path, checkpoint: Path, run_dir: Path, *, trials: int, overlap: bool = False) -> Path:
    """A sweep of TRIALS trials, two at a time, one CPU each. ``overlap``: each trial fine-tunes one
    epoch on 2,048 images (seconds), so that the second trial starts while the first still holds
    the head's CPU and must go to the other node; reconstruction + BN alone end in about a second,
    and such trials ran one after the other, all on the head."""
    recipe, space = dict(TINY_RECIPE), dict(SPACE)
    if overlap:
        recipe["finetune_subset"], space["finetune_epochs"] = 2048, [1, 1]
    config = {"name": "cluster", "checkpoint": str(checkpoint), "data": dict(TINY_DATA), "recipe": recipe,
              "space": space,
              "sweep": {"trials": trials, "concurrency": 2, "cpus_per_trial": 1, "seed": 3, "warm_start": False},
              "run_dir": str(run_dir)}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.fashion_mnist
def test_a_sweep_runs_trials_on_both_nodes_and_logs_every_front_model_to_the_server(
        cluster, mlflow_server, trained_resnet20, tmp_path):
    run_dir = tmp_path / "run"
    path = write_sweep_config(tmp_path, trained_resnet20["out"], run_dir, trials=4, overlap=True)
    proc = prunesweep("sweep", "--config", str(path), "--address", cluster.address,
                      "--tracking-uri", mlflow_server.uri, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["complete"] and data["counts"]["trials"] == 4

    nodes = trial_nodes(run_dir, cluster)
    assert len(nodes) == 4 and set(nodes.values()) == {"node_a", "node_b"}, nodes

    tracker = Tracker(mlflow_server.uri, "prunesweep", run_dir)
    parent = tracker.find_parent()
    assert parent is not None and tracker.client.get_run(parent).info.status == "FINISHED"
    nested = tracker.client.search_runs([tracker.client.get_run(parent).info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.data.tags["prunesweep.trial_id"] for run in nested) == sorted(nodes)  # each trial once
    records = tracker.read_trials()
    assert {r.status for r in records} == {"FINISHED"}
    front = [r for r in records if tracker.client.get_run(r.run_id).data.tags.get(TAG_PARETO) == "true"]
    assert front
    logged = {a.path for a in tracker.client.list_artifacts(parent, "pareto/checkpoints")}
    # every front model reached the server, the second node's as well as the head's; its
    # checkpoint lies in Tune's storage, the run directory, where that node's worker wrote it
    assert logged == {f"pareto/checkpoints/{r.name}.pt" for r in front}
    for record in records:
        assert Path(record.checkpoint).is_relative_to(run_dir / "tune"), record.checkpoint
    on_b = [r for r in records if nodes[r.trial_id] == "node_b"]
    assert on_b and all((Path(r.checkpoint) / "pruned.pt").is_file() for r in on_b)
    fetched = Path(tracker.client.download_artifacts(parent, f"pareto/checkpoints/{front[0].name}.pt", str(tmp_path)))
    assert fetched.read_bytes() == (Path(front[0].checkpoint) / "pruned.pt").read_bytes()


@pytest.mark.fashion_mnist
def test_a_run_dir_that_a_node_does_not_see_stops_the_sweep_before_any_trial(cluster, trained_resnet20, tmp_path):
    run_dir = cluster.hidden / "run"  # the driver writes it; node_b sees an empty tmpfs there
    path = write_sweep_config(tmp_path, trained_resnet20["out"], run_dir, trials=2)
    proc = prunesweep("sweep", "--config", str(path), "--address", cluster.address, "--json", "--quiet")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run_dir: {run_dir} is not visible on 1 of the 2 Ray nodes "
                           f"({cluster.worker.node_id[:12]})"), proc.stderr[-3000:]
    assert "NFS" in last and "docs/cluster.md" in last
    assert not list((run_dir / "tune").glob("*/result.json"))  # no trial ran


@pytest.mark.fashion_mnist
def test_a_compare_runs_cells_on_both_nodes_and_logs_runs_and_tables_to_the_server(
        cluster, mlflow_server, trained_resnet20, tmp_path):
    run_dir = tmp_path / "study"
    # 2,048 test images: cells long enough to overlap, so that the two at a time need both nodes
    # (shorter cells ended before the next one started, all on the head)
    proc = prunesweep("compare", "--checkpoint", str(trained_resnet20["out"]), "--criteria", "l1", "random",
                      "--flops-reductions", "0.5", "--seeds", "0", "1", "--calibration-images", "64",
                      "--batch-size", "64", "--test-subset", "2048", "--concurrency", "2", "--address", cluster.address,
                      "--tracking-uri", mlflow_server.uri, "--run-dir", str(run_dir), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["counts"]["finished"] == 4 and data["counts"]["failed"] == 0

    nodes = trial_nodes(run_dir, cluster)
    assert len(nodes) == 4 and set(nodes.values()) == {"node_a", "node_b"}, nodes
    from orchestrator.studies.run import TRACKING_KIND

    tracker = Tracker(mlflow_server.uri, "prunesweep-compare", run_dir, kind=TRACKING_KIND)
    parent = tracker.find_parent()
    assert parent is not None and tracker.client.get_run(parent).info.status == "FINISHED"
    runs = tracker.trial_runs()
    assert sorted(runs) == sorted(nodes) and {r.info.status for r in runs.values()} == {"FINISHED"}  # each cell once
    tables = {a.path for a in tracker.client.list_artifacts(parent, "study")}
    assert {"study/accuracy_vs_macs.png", "study/ranks.png"} <= tables and any(t.endswith(".csv") for t in tables)


@pytest.mark.fashion_mnist
def test_a_node_lost_mid_sweep_leaves_every_trial_logged_once_and_the_rest_on_the_head(
        cluster, mlflow_server, trained_resnet20, tmp_path):
    # last in this module: it takes node_b out of the module's cluster
    run_dir = tmp_path / "run"
    path = write_sweep_config(tmp_path, trained_resnet20["out"], run_dir, trials=4)
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "--config", str(path),
                               "--address", cluster.address, "--tracking-uri", mlflow_server.uri, "--json", "--quiet"],
                              cwd=REPO, env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # two trial folders: the first two trials started, one per node (one CPU each)
        while len([p for p in (run_dir / "tune").glob("*/") if (p / "params.json").is_file()]) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()[-3000:]
            time.sleep(0.2)
        os.kill(cluster.worker.raylet(), signal.SIGKILL)
        killed_at = time.time()
        stdout, stderr = driver.communicate(timeout=TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    data = json.loads(stdout)
    assert data["complete"] and data["counts"]["trials"] == 4
    # the trial that was running on node_b is started again on the head (FailureConfig(max_failures=1)):
    # nothing FAILED
    assert data["counts"]["failed"] == 0 and data["counts"]["finished"] == 4

    tracker = Tracker(mlflow_server.uri, "prunesweep", run_dir)
    parent = tracker.find_parent()
    nested = tracker.client.search_runs([tracker.client.get_run(parent).info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{parent}'")
    ids = [run.data.tags["prunesweep.trial_id"] for run in nested]
    assert len(ids) == 4 and len(set(ids)) == 4, ids  # nothing lost, nothing logged twice
    assert {run.info.status for run in nested} == {"FINISHED"}
    # every trial Tune started after the kill finished, and on the head
    nodes = trial_nodes(run_dir, cluster)
    later = [folder for folder in (run_dir / "tune").glob("*/") if started_at(folder) > killed_at]
    assert later, "no trial started after the kill"
    for folder in later:
        trial_id = json.loads((folder / "result.json").read_text().strip().splitlines()[-1])["trial_id"]
        assert nodes[trial_id] == "node_a", folder
