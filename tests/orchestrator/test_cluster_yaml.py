"""cluster.yaml is a valid Ray cluster-launcher config (the schema shipped inside the ray package),
and so is the AWS alternative documented in its comments."""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a dependency of ray[tune]) is not installed")


@pytest.fixture(scope="module")
def schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert path.is_file(), f"the ray package ships no cluster-launcher schema at {path}"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema(config, schema):
    jsonschema.validate(config, schema)


def test_ray_accepts_the_config(config):
    """Ray's own preparation (fills the local node type from worker_ips) and validation."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])


def test_on_prem_provider_auth_and_setup(config):
    provider = config["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "-e ~/prunesweep" in setup
    assert config["file_mounts"]["~/prunesweep"] == "."


def _ray_start_flags(command: str) -> set[str]:
    words = shlex.split(command.split("ray start", 1)[1])
    return {w.split("=", 1)[0] for w in words if w.startswith("--")}


def test_start_commands_use_real_ray_start_flags(config):
    from ray.scripts.scripts import start

    known = {opt for param in start.params for opt in param.opts}
    head = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert len(head) == 1 and len(workers) == 1
    head_flags, worker_flags = _ray_start_flags(head[0]), _ray_start_flags(workers[0])
    assert head_flags <= known and worker_flags <= known, (head_flags | worker_flags) - known
    assert "--head" in head_flags and "--dashboard-host=127.0.0.1" in head[0]  # dashboard on loopback only
    assert "--address=$RAY_HEAD_IP:6379" in workers[0]


def test_documented_aws_alternative_validates(config, schema):
    text = CLUSTER_YAML.read_text()
    block = re.search(r"^#   provider:\n(?:#.*\n)*?#   head_node_type: head\n", text, re.MULTILINE)
    assert block, "the AWS example in the comments of cluster.yaml is missing"
    lines = [line[4:] if line.startswith("#   ") else "" for line in block.group(0).splitlines()]
    cloud = yaml.safe_load("\n".join(line for line in lines if not line.lstrip().startswith("#")))
    assert cloud["provider"]["type"] == "aws"
    merged = {**config, **cloud}
    jsonschema.validate(merged, schema)


def test_the_heads_mlflow_server_starts_on_loopback_once(config, tmp_path):
    """The head's start command, run as `ray up` would (bash, in the node's home), starts an MLflow
    server that answers on 127.0.0.1 only, and run again keeps it (one server)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from cluster_helpers import descendants, free_port

    [command] = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert "--host 127.0.0.1" in command and "--port 5000" in command
    port = free_port()
    command = command.replace("5000", str(port))
    (tmp_path / "prunesweep-venv").symlink_to(sys.prefix)
    env = {**os.environ, "HOME": str(tmp_path)}
    log = tmp_path / "prunesweep-mlflow" / "server.log"

    def servers() -> list[int]:
        pids = [int(p.name) for p in Path("/proc").glob("[0-9]*") if (p / "cmdline").is_file()]
        found = []
        for pid in pids:
            try:
                argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"server" in argv and str(tmp_path).encode() in b" ".join(argv) and any(a.endswith(b"mlflow") for a in argv):
                found.append(pid)
        return found

    try:
        for _ in range(2):
            subprocess.run(["bash", "-c", command], env=env, check=True, timeout=60)
            deadline = time.monotonic() + 180
            while True:
                try:
                    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()[-2000:] if log.exists() else "no log"
                    time.sleep(0.5)
            assert len(servers()) == 1
        assert (tmp_path / "prunesweep-mlflow" / "mlflow.db").is_file()
    finally:
        for pid in servers():
            for target in (pid, *descendants(pid)):
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
