"""A local Ray confined to a private loopback-only network namespace (orchestrator.distributed.network).

These tests start their own Ray in subprocesses (the namespace is per process): one probe that
inspects the namespace from the driver and from a Ray worker, and one real `prunesweep stats
--workers 1` run through the process entry point. Both are skipped only where the kernel refuses
unprivileged user namespaces (the error and fallback tests below still run there): the default
`--ray-network auto` then runs on the host network, with one line saying so, which is tested by
making `unshare` fail. The relay to a server on the host's loopback is tested with a plain HTTP
server (the MLflow server itself: test_tracking_server.py).
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
from orchestrator.distributed import relay
from orchestrator.experiment import ConfigError, check_tracking_reachable
from orchestrator.experiment.tracking_server import TrackingUnavailable

TIMEOUT_S = 240


def _python(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", private_network.ACTIVE_ENV, relay.RELAY_ENV)}
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
    from pruning.statistics import ActivationStats

    checkpoint = _tiny_checkpoint(tmp_path)
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


@pytest.mark.parametrize("argv, mode", [
    (["stats", "--workers", "2"], "auto"),
    (["prune", "--workers", "1"], "auto"),
    (["stats"], None),  # --workers 0: no Ray at all
    (["stats", "--workers", "2", "--ray-network", "host"], None),
    (["stats", "--workers", "2", "--ray-network", "private"], "private"),
    (["stats", "--workers", "2", "--address", "auto"], None),  # a cluster's network is its own
    (["sweep"], "auto"),
    (["sweep", "--ray-network", "private"], "private"),
    (["compare", "--criteria", "l1", "--flops-reductions", "0.5"], "auto"),
    (["compare", "--criteria", "l1", "--flops-reductions", "0.5", "--address", "ray://h:10001"], None),
])
def test_which_commands_start_ray_in_the_private_network(argv, mode, tmp_path, monkeypatch, capsys):
    """The process entry point re-executes itself in the namespace exactly when it would start a
    local Ray, allowed to fall back to the host network under the default ``auto`` only;
    otherwise (and once it has chosen) the command itself runs, here into its missing
    checkpoint or config: one error line, exit 2, before any Ray is started."""
    def reexecute(module, args, *, fallback=False):
        raise Reexecuted(module, args, fallback)

    missing = str(tmp_path / "missing.pt")
    needs = {"stats": ["--checkpoint", missing, "--out", str(tmp_path / "s.pt")], "prune": ["--checkpoint", missing],
             "compare": ["--checkpoint", missing], "sweep": []}[argv[0]]
    monkeypatch.setattr(distributed, "exec_module", reexecute)
    monkeypatch.setattr(sys, "argv", ["prunesweep", *argv, *needs])
    monkeypatch.delenv(private_network.ACTIVE_ENV, raising=False)
    if mode is not None:
        with pytest.raises(Reexecuted) as raised:
            cli.main()
        assert raised.value.args == ("orchestrator.cli", [*argv, *needs], mode == "auto")
    for chosen in ("1", "host"):  # inside the namespace, or fell back to the host: never again
        monkeypatch.setenv(private_network.ACTIVE_ENV, chosen)
        assert cli.main() == cli.EXIT_BAD_INPUT
        assert capsys.readouterr().err.startswith("error: ")


WHERE = textwrap.dedent('''
    import json, os
    from orchestrator.distributed import network
    print(json.dumps({"active": network.active(), "decided": network.decided(), "ns": os.readlink("/proc/self/ns/net")}))
''')


def _run_refused(tmp_path, refuse: str, *argv: str) -> subprocess.CompletedProcess:
    """``network.main(argv)`` in a subprocess whose namespace fails as ``refuse`` says: at the
    ``unshare`` itself, or (as under Ubuntu's AppArmor restriction) at the uid map after it."""
    (tmp_path / "where_am_i.py").write_text(WHERE)
    script = textwrap.dedent(f'''
        import errno, sys
        from orchestrator.distributed import network

        def refuse_unshare(flags):
            raise network.PrivateNetworkError(errno.EPERM, "unshare(user + network namespace) failed: "
                                              "Operation not permitted")

        def refuse_uid_map(path, text):
            raise PermissionError(errno.EPERM, "Operation not permitted", path)

        network.{"_unshare = refuse_unshare" if refuse == "unshare" else "_write = refuse_uid_map"}
        sys.exit(network.main({list(argv)!r}))
    ''')
    return _python("-c", script, cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})


@pytest.mark.parametrize("refuse", ["unshare", "uid_map"])
def test_auto_falls_back_to_the_host_network_with_one_line(refuse, tmp_path):
    proc = _run_refused(tmp_path, refuse, private_network.OR_HOST, "where_am_i")
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = json.loads(proc.stdout)
    assert where == {"active": False, "decided": True, "ns": os.readlink("/proc/self/ns/net")}  # the host's network
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: no private loopback-only network here"), proc.stderr
    assert "Ray's auth token" in lines[0] and "--ray-network private" in lines[0]
    # without --or-host (--ray-network private) the same refusal is the error line, exit 2
    proc = _run_refused(tmp_path, refuse, "where_am_i")
    assert proc.returncode == private_network.EXIT_UNAVAILABLE and proc.stdout == ""
    assert proc.stderr.startswith("error: cannot confine Ray") and "--ray-network host" in proc.stderr


def test_cli_stats_with_workers_falls_back_to_the_host_network(tmp_path, fashion_mnist):
    """What the default ``--ray-network auto`` re-executes into where the kernel refuses the
    namespace: the command runs, its Ray on the host network, after the one note line."""
    checkpoint = _tiny_checkpoint(tmp_path)
    proc = _run_refused(tmp_path, "unshare", private_network.OR_HOST, "orchestrator.cli", "stats", "--checkpoint",
                        str(checkpoint), "--calibration-images", "64", "--workers", "1", "--json", "--quiet",
                        "--out", str(tmp_path / "s.pt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["workers"] == 1 and json.loads(proc.stdout)["ray_network"] == "host"
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: no private loopback-only network")]
    assert len(notes) == 1, proc.stderr[-2000:]
    assert (tmp_path / "s.pt").is_file()


def _tiny_checkpoint(tmp_path: Path) -> Path:
    from pruning.data import DataConfig
    from pruning.models import create_model
    from pruning.structure import ModelSpec, save_checkpoint

    torch.manual_seed(0)
    checkpoint = tmp_path / "r20.pt"
    data_config = asdict(DataConfig(name="fashion-mnist", calibration_size=128, train_subset=256, test_subset=64))
    save_checkpoint(checkpoint, create_model("resnet20", num_classes=10, in_channels=1),
                    ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"data": data_config}))
    return checkpoint


RELAY_PROBE = textwrap.dedent('''
    import json, sys, urllib.request
    from orchestrator.distributed import relay
    port, closed = int(sys.argv[1]), int(sys.argv[2])

    def fetch(url):
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError as err:
            return f"unreachable: {err}"

    before = fetch(f"http://127.0.0.1:{port}/")
    relay.forward("127.0.0.1", port)
    relay.forward("localhost", port)  # 127.0.0.1 is forwarded already; ::1 too where the namespace has IPv6
    report = {"before": before, "ipv4": fetch(f"http://127.0.0.1:{port}/"), "name": fetch(f"http://localhost:{port}/"),
              "unforwarded": fetch(f"http://127.0.0.1:{closed}/")}
    for host, p in (("127.0.0.1", closed), ("10.1.2.3", 80)):
        try:
            relay.check(host, p)
            report[host] = "accepted"
        except OSError as err:
            report[host] = err.strerror
    print(json.dumps(report))
''')


@needs_namespaces
def test_the_relay_reaches_a_server_on_the_host_loopback_and_nothing_else(tmp_path):
    import http.server
    import socket
    import threading

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        (tmp_path / "relay_probe.py").write_text(RELAY_PROBE)
        proc = _python("-m", "orchestrator.distributed.network", "relay_probe", str(server.server_port), str(closed),
                       cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["before"].startswith("unreachable:")  # the namespace's own loopback: nothing there
    assert report["ipv4"] == report["name"] == "hello from the host"
    assert report["unforwarded"].startswith("unreachable:")  # only the forwarded port leads out
    assert report["127.0.0.1"] == "Connection refused"  # the host side's reason comes back
    assert "not a loopback address" in report["10.1.2.3"]  # no route to another host


def test_tracking_servers_inside_the_private_network(monkeypatch):
    monkeypatch.setenv(private_network.ACTIVE_ENV, "1")
    monkeypatch.delenv(relay.RELAY_ENV, raising=False)
    check_tracking_reachable("sqlite:////tmp/x/mlflow.db")
    for remote in ("http://10.0.0.7:5000", "https://mlflow.example.org", "databricks"):
        with pytest.raises(ConfigError, match="--ray-network host"):
            check_tracking_reachable(remote)
    # the host's loopback is reached through the relay the entry point starts; without it, one line
    with pytest.raises(ConfigError, match="relay that `prunesweep` starts; pass --ray-network host"):
        check_tracking_reachable("http://127.0.0.1:5000")


def test_an_unreachable_tracking_server_is_one_line_within_seconds(monkeypatch):
    import socket
    import time

    monkeypatch.delenv(private_network.ACTIVE_ENV, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as raised:
        check_tracking_reachable(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 30  # mlflow's import included; MLflow's own retries: minutes
    message = str(raised.value)
    assert "\n" not in message and raised.value.reason == "Connection refused"
    assert message.startswith(f"tracking.uri: the MLflow server http://127.0.0.1:{port} does not answer")


def test_other_platforms_are_refused_before_any_system_call(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(private_network.PrivateNetworkError, match="only on Linux, not on darwin"):
        private_network.enter()
    assert not private_network.active()
