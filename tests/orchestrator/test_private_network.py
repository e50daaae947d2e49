"""A local Ray confined to a private loopback-only network namespace (orchestrator.distributed.network).

These tests start their own Ray in subprocesses (the namespace is per process): one probe that
inspects the namespace from the driver and from a Ray worker, and one real `prunesweep stats
--workers 1` run through the process entry point. Both are skipped only where the kernel refuses
unprivileged user namespaces (the error test below still runs there).
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from orchestrator import cli, distributed
from orchestrator.distributed import network as private_network
from orchestrator.sweeps import ConfigError, check_tracking_reachable

TIMEOUT_S = 240


def _python(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", private_network.ACTIVE_ENV)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**base, **(env or {})}, cwd=cwd)


def _namespaces_refused() -> str | None:
    proc = _python("-m", "orchestrator.distributed.network", "platform")
    return None if proc.returncode == 0 else proc.stderr.strip()


NAMESPACES_REFUSED = _namespaces_refused()
needs_namespaces = pytest.mark.skipif(
    NAMESPACES_REFUSED is not None, reason=f"unprivileged user namespaces refused: {NAMESPACES_REFUSED}"
)

PROBE = textwrap.dedent('''
    import ipaddress, json, os, socket
    import ray
    from orchestrator.distributed import network as private_network
    from orchestrator.distributed import connect

    def listening(table):
        found = []
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state != "0A":  # TCP_LISTEN
                    continue
                raw = bytes.fromhex(local.split(":")[0])
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(raw)))
        return found

    connection = connect(None)

    @ray.remote
    def seen_by_worker():
        return private_network.interfaces(), os.readlink("/proc/self/ns/net")

    worker_interfaces, worker_ns = ray.get(seen_by_worker.remote())
    print(json.dumps({
        "started": connection.started,
        "driver_interfaces": private_network.interfaces(),
        "worker_interfaces": worker_interfaces,
        "driver_ns": os.readlink("/proc/self/ns/net"),
        "worker_ns": worker_ns,
        "listeners": listening("/proc/net/tcp") + listening("/proc/net/tcp6"),
        "uid": os.getuid(),
    }))
    ray.shutdown()
''')


@needs_namespaces
def test_local_ray_in_the_private_network_sees_only_loopback(tmp_path):
    (tmp_path / "ray_probe.py").write_text(PROBE)
    proc = _python("-m", "orchestrator.distributed.network", "ray_probe", cwd=tmp_path,
                   env={"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["started"]
    assert probe["driver_interfaces"] == ["lo"] and probe["worker_interfaces"] == ["lo"]
    assert probe["driver_ns"] == probe["worker_ns"] != os.readlink("/proc/self/ns/net")
    assert probe["uid"] == os.getuid()  # files keep their owner
    assert probe["listeners"], "Ray listens on something"
    for address in probe["listeners"]:  # whatever Ray binds, only loopback can carry it here
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        assert ip.is_unspecified or ip.is_loopback or (mapped is not None and mapped.is_loopback), address


@needs_namespaces
def test_cli_stats_with_workers_runs_in_the_private_network(tmp_path, fashion_mnist):
    from pruning.data import DataConfig
    from pruning.models import create_model
    from pruning.statistics import ActivationStats
    from pruning.structure import ModelSpec, save_checkpoint

    torch.manual_seed(0)
    checkpoint = tmp_path / "r20.pt"
    data_config = asdict(DataConfig(name="fashion-mnist", calibration_size=128, train_subset=256, test_subset=64))
    save_checkpoint(checkpoint, create_model("resnet20", num_classes=10, in_channels=1),
                    ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"data": data_config}))
    common = ["stats", "--checkpoint", str(checkpoint), "--calibration-images", "64", "--json", "--quiet"]
    env = {"PRUNESWEEP_CACHE": str(tmp_path / "cache")}

    proc = _python("-m", "orchestrator.cli", *common, "--workers", "1", "--out", str(tmp_path / "ray.pt"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["workers"] == 1 and data["ray_network"] == "private"

    proc = _python("-m", "orchestrator.cli", *common, "--out", str(tmp_path / "local.pt"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["ray_network"] is None  # no Ray, no namespace
    ray_state, local_state = ActivationStats.load(tmp_path / "ray.pt"), ActivationStats.load(tmp_path / "local.pt")
    for name, layer in local_state.layers.items():
        for field, tensor in layer.tensors().items():
            torch.testing.assert_close(getattr(ray_state.layers[name], field), tensor, rtol=1e-10, atol=1e-10)


def test_a_refused_namespace_is_one_error_line_naming_the_way_out():
    # unshare(CLONE_NEWUSER) is refused in a process that runs more than one thread
    proc = _python("-c", textwrap.dedent('''
        import sys, threading, time
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        from orchestrator.distributed import network as private_network
        sys.exit(private_network.main(["platform"]))
    '''))
    assert proc.returncode == private_network.EXIT_UNAVAILABLE
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot confine Ray"), proc.stderr
    assert "Invalid argument" in lines[0] and "--ray-network host" in lines[0]


def test_download_is_refused_in_the_private_network(tmp_path):
    proc = _python("-m", "orchestrator.cli", "stats", "--checkpoint", str(tmp_path / "x.pt"), "--download",
                   "--workers", "1", "--out", str(tmp_path / "s.pt"))
    assert proc.returncode == cli.EXIT_BAD_INPUT
    assert proc.stderr.startswith("error: --download needs the network") and "--ray-network host" in proc.stderr
    assert not (tmp_path / "s.pt").exists()


class Reexecuted(Exception):
    """Raised instead of replacing the process: the entry point chose the private network."""


@pytest.mark.parametrize("argv, private", [
    (["stats", "--workers", "2"], True),
    (["prune", "--workers", "1"], True),
    (["stats"], False),  # --workers 0: no Ray at all
    (["stats", "--workers", "2", "--ray-network", "host"], False),
    (["stats", "--workers", "2", "--address", "auto"], False),  # a cluster's network is its own
    (["sweep"], True),
    (["compare", "--criteria", "l1", "--flops-reductions", "0.5"], True),
    (["compare", "--criteria", "l1", "--flops-reductions", "0.5", "--address", "ray://h:10001"], False),
])
def test_which_commands_start_ray_in_the_private_network(argv, private, tmp_path, monkeypatch, capsys):
    """The process entry point re-executes itself in the namespace exactly when it would start a
    local Ray; otherwise (and once inside) the command itself runs, here into its missing
    checkpoint or config: one error line, exit 2, before any Ray is started."""
    def reexecute(module, args):
        raise Reexecuted(module, args)

    missing = str(tmp_path / "missing.pt")
    needs = {"stats": ["--checkpoint", missing, "--out", str(tmp_path / "s.pt")], "prune": ["--checkpoint", missing],
             "compare": ["--checkpoint", missing], "sweep": []}[argv[0]]
    monkeypatch.setattr(distributed, "exec_module", reexecute)
    monkeypatch.setattr(sys, "argv", ["prunesweep", *argv, *needs])
    monkeypatch.delenv(private_network.ACTIVE_ENV, raising=False)
    if private:
        with pytest.raises(Reexecuted) as raised:
            cli.main()
        assert raised.value.args == ("orchestrator.cli", [*argv, *needs])
        monkeypatch.setenv(private_network.ACTIVE_ENV, "1")  # already inside: never again
    assert cli.main() == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: ")


def test_remote_tracking_server_is_refused_inside_the_private_network(monkeypatch):
    monkeypatch.setenv(private_network.ACTIVE_ENV, "1")
    for reachable in ("sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5000", "http://localhost:5000"):
        check_tracking_reachable(reachable)
    for remote in ("http://10.0.0.7:5000", "https://mlflow.example.org", "databricks"):
        with pytest.raises(ConfigError, match="--ray-network host"):
            check_tracking_reachable(remote)
    monkeypatch.delenv(private_network.ACTIVE_ENV)
    check_tracking_reachable("http://10.0.0.7:5000")  # on the host network anything goes


def test_other_platforms_are_refused_before_any_system_call(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(private_network.PrivateNetworkError, match="only on Linux, not on darwin"):
        private_network.enter()
    assert not private_network.active()
