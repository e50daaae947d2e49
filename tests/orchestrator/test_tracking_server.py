"""Sweeps logging to a real MLflow tracking server (``mlflow server``, sqlite backend, proxied
artifacts, all in a temporary folder) through the ``prunesweep`` entry point with the default
``--ray-network auto``: inside the private network namespace where the kernel allows it (the
server on the host's loopback is reached through the relay), else on the host network.

Also: an unreachable server fails within seconds with one line; a server killed mid-sweep stops
the sweep cleanly with the results kept, and ``--resume`` logs every trial exactly once; and the
pieces behind that (error classification, the trial logger's buffer, the runner's check) alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cluster_helpers import MLFLOW, MlflowServer, free_port
from orchestrator.distributed import network as private_network
from orchestrator.distributed import relay
from orchestrator.experiment import Tracker, callback, runner
from orchestrator.experiment.callback import MlflowTrialLogger
from orchestrator.experiment.tracking_server import GuardedClient, TrackingUnavailable, unavailable_reason
from orchestrator.experiment.trial_meta import META_KEY, TrialMeta

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
TINY_DATA = {"calibration_images": 64, "batch_size": 64}
TINY_RECIPE = {"bn_batches": 2, "batch_size": 64, "finetune_subset": 64}
SPACE = {"name": "uniform", "criteria": ["l1", "fpgm"], "finetune_epochs": [0, 0], "flops_bounds": [0.0, 0.95]}


def prunesweep(*args: str, env: dict | None = None, wait: bool = True):
    """``python -m orchestrator.cli ARGS`` as a user's shell runs it: its own Ray, default network."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", private_network.ACTIVE_ENV, relay.RELAY_ENV)}
    command = [sys.executable, "-m", "orchestrator.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env={**base, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def write_config(tmp_path: Path, checkpoint: Path | str, *, trials: int) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    config = {"name": "served", "checkpoint": str(checkpoint), "data": dict(TINY_DATA), "recipe": dict(TINY_RECIPE),
              "space": dict(SPACE), "sweep": {"trials": trials, "concurrency": 1, "seed": 3, "warm_start": False},
              "run_dir": str(run_dir)}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, run_dir


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not MLFLOW.is_file():
        pytest.skip(f"no mlflow command next to {sys.executable}")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    yield server
    server.kill()


def nested_runs(uri: str, run_dir: Path) -> tuple[list, list]:
    """(parent runs of ``run_dir``, every nested run of them) in the server, deleted ones excluded."""
    tracker = Tracker(uri, "prunesweep", run_dir)
    client = tracker.client
    experiment = client.get_experiment_by_name("prunesweep")
    if experiment is None:
        return [], []
    parents = client.search_runs([experiment.experiment_id], f"tags.`prunesweep.run_dir` = '{run_dir}'")
    children = [run for parent in parents for run in
                client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")]
    return parents, children


# --- through the server -------------------------------------------------------------------------


@pytest.mark.fashion_mnist
def test_a_sweep_logs_to_a_server_on_this_hosts_loopback_by_default(mlflow_server, trained_resnet20, tmp_path):
    path, run_dir = write_config(tmp_path, trained_resnet20["out"], trials=2)
    proc = prunesweep("sweep", "--config", str(path), "--tracking-uri", mlflow_server.uri, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 1, proc.stdout[:2000]  # one JSON object: no MLflow "View run" lines
    data = json.loads(proc.stdout)
    assert data["complete"] and data["counts"]["trials"] == 2 and data["tracking_uri"] == mlflow_server.uri
    assert data["mlflow_ui"] == mlflow_server.uri  # the server serves its UI; `mlflow ui` could not open it
    parents, children = nested_runs(mlflow_server.uri, run_dir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {run.info.status for run in children} == {"FINISHED"}
    # the artifacts went through the server too: the front's table and the config
    artifacts = {a.path for a in Tracker(mlflow_server.uri, "prunesweep", run_dir).client.list_artifacts(
        parents[0].info.run_id, "pareto")}
    assert "pareto/front.json" in artifacts


def test_an_unreachable_server_stops_the_sweep_within_seconds_with_one_line(tmp_path):
    # the checkpoint does not exist either: the tracking URI is checked first, before anything loads
    path, run_dir = write_config(tmp_path, tmp_path / "absent.pt", trials=2)
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = prunesweep("sweep", "--config", str(path), "--tracking-uri", uri, "--quiet")
    seconds = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: tracking.uri: the MLflow server {uri} does not answer ("), \
        proc.stderr
    assert "Connection refused" in lines[0] and "--tracking-uri" in lines[0]
    assert seconds < 90, f"{seconds:.0f} s, mostly Python and mlflow imports on a busy machine"  # not MLflow's minutes
    assert not (run_dir / "tune").exists()


@pytest.mark.fashion_mnist
def test_a_server_killed_mid_sweep_stops_it_cleanly_and_resume_logs_every_trial_once(
        mlflow_server, trained_resnet20, tmp_path):
    # two trials, one at a time: the second runs while the server is gone
    path, run_dir = write_config(tmp_path, trained_resnet20["out"], trials=2)
    # one retry: the sweep gives up on the gone server within seconds instead of a minute
    driver = prunesweep("sweep", "--config", str(path), "--tracking-uri", mlflow_server.uri, "--json", "--quiet",
                        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}, wait=False)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and driver.poll() is None:
            if any(run.info.status == "FINISHED" for run in nested_runs(mlflow_server.uri, run_dir)[1]):
                break
            time.sleep(0.3)
        assert driver.poll() is None, f"the sweep ended before the kill: {driver.stderr.read()[-3000:]}"
        mlflow_server.kill()  # after the first trial was logged
        _, stderr = driver.communicate(timeout=TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
        mlflow_server.kill()
    assert driver.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking.uri: the MLflow server {mlflow_server.uri} does not answer ("), stderr[-3000:]
    # "N ended trial(s) are not logged" when the trials outlived the server, as they mostly do; a
    # kill that lands in the front's evaluation at the end says the same without that count
    assert f"prunesweep sweep --resume {run_dir}" in last

    mlflow_server.start()
    proc = prunesweep("sweep", "--resume", str(run_dir), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["complete"] and data["counts"]["trials"] == 2
    parents, children = nested_runs(mlflow_server.uri, run_dir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [run.data.tags["prunesweep.trial_id"] for run in children]
    assert len(trial_ids) == 2 and len(set(trial_ids)) == 2, trial_ids  # each trial exactly once
    assert {run.info.status for run in children} == {"FINISHED"}


# --- the pieces -----------------------------------------------------------------------------------


def test_cannot_reach_is_told_apart_from_other_errors():
    import requests
    from mlflow.exceptions import MlflowException, RestException

    def wrapped(cause: Exception) -> MlflowException:
        try:
            raise cause
        except Exception as err:  # what MLflow's http_request does with requests' errors
            try:
                raise MlflowException(f"API request to http://x/api failed with exception {err}")
            except MlflowException as outer:
                return outer

    refused = requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError("
        "'<urllib3.connection.HTTPConnection object>: Failed to establish a new connection: [Errno 111] "
        "Connection refused'))")
    assert unavailable_reason(wrapped(refused)) == "Connection refused"
    assert unavailable_reason(wrapped(requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)"))) == "timed out"
    assert unavailable_reason(ConnectionResetError(104, "Connection reset by peer")) == "Connection reset by peer"
    assert unavailable_reason(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"})) is None
    assert unavailable_reason(wrapped(ValueError("bad value"))) is None


def test_the_guarded_client_raises_one_line_and_passes_the_rest():
    class Client:
        tracking_uri = "http://x"

        def ok(self, value):
            return value * 2

        def gone(self):
            raise ConnectionRefusedError(111, "Connection refused")

        def bug(self):
            raise KeyError("k")

    client = GuardedClient(Client(), "http://x", lambda: "resume it")
    assert client.ok(2) == 4 and client.tracking_uri == "http://x"
    with pytest.raises(TrackingUnavailable, match=r"^tracking.uri: the MLflow server http://x does not answer "
                                                  r"\(Connection refused\); resume it$"):
        client.gone()
    with pytest.raises(KeyError):
        client.bug()


class FakeTracker:
    """A tracking server that is down until ``up`` is set; counts every request."""

    def __init__(self) -> None:
        self.up = False
        self.requests = 0
        self.logged: list[str] = []

    def _ask(self) -> None:
        self.requests += 1
        if not self.up:
            raise TrackingUnavailable("http://x", "Connection refused")

    def log_trial(self, record, existing=None) -> str:
        self._ask()
        self.logged.append(record.name)
        return record.trial_id

    def trial_runs(self) -> dict:
        self._ask()
        return {}

    def trial_key(self, trial_id: str, name: str) -> str:
        return trial_id


def fake_trial(number: int, status: str = "TERMINATED"):
    return SimpleNamespace(trial_id=f"t{number}", config={META_KEY: TrialMeta(number=number), "criterion": "l1"},
                           last_result={"accuracy": 0.5, "macs": 10.0}, status=status, checkpoint=None,
                           experiment_tag=str(number))


def test_the_trial_logger_keeps_results_while_the_server_is_down(monkeypatch, tmp_path):
    clock = [1000.0]
    monkeypatch.setattr(callback.time, "monotonic", lambda: clock[0])
    server = FakeTracker()
    logger = MlflowTrialLogger(Tracker("http://x", "prunesweep", tmp_path), metric_names=("accuracy", "macs"))
    logger._tracker = server
    trials = [fake_trial(i) for i in range(4)]

    logger.on_trial_complete(0, trials, trials[0])
    assert server.requests == 1 and server.logged == []  # refused: kept
    logger.on_trial_complete(0, trials, trials[1])
    assert server.requests == 1  # a moment later: not asked again (no stall per trial)
    clock[0] += callback.RETRY_AFTER_S
    server.up = True
    logger.on_trial_complete(0, trials, trials[2])
    assert server.logged == ["trial-000", "trial-001", "trial-002"]  # the kept ones first

    server.up = False
    logger.on_trial_complete(0, trials, trials[3])
    logger.on_experiment_end(trials)  # asks again whatever the clock says, then reports what is missing
    # it could not even list the logged ones: the missing ones are those it did not log
    assert MlflowTrialLogger.unlogged.pop(str(tmp_path)) == ("Connection refused", ["trial-003"])
    server.up = True
    logger.on_experiment_end(trials)
    assert str(tmp_path) not in MlflowTrialLogger.unlogged
    assert server.logged[-4:] == ["trial-000", "trial-001", "trial-002", "trial-003"]  # the store lists none: all again


def test_the_trial_logger_leaves_the_trials_running_at_an_interruption_to_the_resume(tmp_path):
    server = FakeTracker()
    server.up = True
    logger = MlflowTrialLogger(Tracker("http://x", "prunesweep", tmp_path), metric_names=("accuracy", "macs"))
    logger._tracker = server
    trials = [fake_trial(i, status="RUNNING") for i in range(3)]
    for trial in trials:
        logger.on_trial_start(0, trials, trial)
    trials[0].status = "TERMINATED"
    logger.on_trial_complete(0, trials, trials[0])
    for trial in trials[1:]:  # what Tune does to the running trials when Ctrl-C ends the experiment
        trial.status = "TERMINATED"
    logger.on_experiment_end(trials)
    assert server.logged == ["trial-000", "trial-000"]  # when it ended, and again by the reconciliation
    assert str(tmp_path) not in MlflowTrialLogger.unlogged


def write_sweep_dir(tmp_path: Path, statuses: list[str], trials: int) -> Path:
    """The run directory of a sweep of ``trials`` trials as ``pareto`` reads it without MLflow:
    its config, and Tune's snapshot of the trials it started, with ``statuses``."""
    path, run_dir = write_config(tmp_path, tmp_path / "base.pt", trials=trials)
    (run_dir / "tune").mkdir(parents=True)
    shutil.copy(path, run_dir / "sweep.yaml")
    states = [[json.dumps({"status": status}), "{}"] for status in statuses]
    (run_dir / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": states}))
    return run_dir


@pytest.mark.parametrize("statuses, trials, unfinished", [
    (["TERMINATED", "ERROR"], 2, False),
    (["TERMINATED", "RUNNING"], 2, True),  # interrupted: Tune saved the running trial as running
    (["TERMINATED"], 2, True),  # killed before Tune started the second trial
])
def test_pareto_against_a_dead_server_says_to_start_it_and_resume_only_an_unfinished_sweep(
        monkeypatch, capsys, tmp_path, statuses, trials, unfinished):
    from orchestrator import cli

    run_dir = write_sweep_dir(tmp_path, statuses, trials)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["pareto", str(run_dir), "--tracking-uri", uri]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: tracking.uri: the MLflow server {uri} does not answer (Connection refused); "
                               "start it, or give a --tracking-uri that answers"), lines[0]
    assert (f"; the sweep is unfinished: `prunesweep sweep --resume {run_dir}` continues it" in lines[0]) == unfinished
    assert "Tune keeps" not in lines[0]


def test_the_runner_stops_with_one_line_naming_the_resume(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / runner.EXPERIMENT_NAME).mkdir(parents=True)
    tracker = Tracker("http://127.0.0.1:1", "prunesweep", run_dir)
    runner.check_all_logged(tracker)  # nothing missing: nothing to say
    MlflowTrialLogger.unlogged[tracker.run_dir] = ("Connection refused", [f"trial-{i:03d}" for i in range(7)])
    with pytest.raises(TrackingUnavailable) as raised:
        runner.check_all_logged(tracker)
    message = str(raised.value)
    assert "\n" not in message and tracker.run_dir not in MlflowTrialLogger.unlogged
    assert message == (f"tracking.uri: the MLflow server http://127.0.0.1:1 does not answer (Connection refused); "
                       f"7 ended trial(s) are not logged (trial-000, trial-001, trial-002, trial-003, trial-004 and 2 "
                       f"more); Tune keeps the trial results: resume with `prunesweep sweep --resume {tracker.run_dir}` "
                       "once it answers")
