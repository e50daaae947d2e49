"""Real servers for tests: a two-node Ray cluster started with Ray's own CLI and an ``mlflow
server``, both on 127.0.0.1, each in its own process group and torn down by pid (never a bare
``ray stop``, which would stop every Ray on the machine)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
MLFLOW = BIN / "mlflow"
#: token auth as the machine's Ray is configured; the token is ~/.ray/auth_token
RAY_ENV = {"RAY_AUTH_MODE": "token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (from /proc: no psutil in this environment)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        # the name in parentheses may hold spaces: the parent pid is the 2nd field after it
        parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill_tree(process: subprocess.Popen | None) -> None:
    """SIGKILL ``process``, its process group and every descendant still alive (Ray's raylet
    and workers may leave the group), each by pid."""
    if process is None:
        return
    family = descendants(process.pid)
    for target in (lambda: os.killpg(process.pid, signal.SIGKILL), *(
            (lambda pid=pid: os.kill(pid, signal.SIGKILL)) for pid in family)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


class RayNode:
    """One ``ray start --block`` node: ``num_cpus`` CPUs, the custom resource ``label``, its own
    temp dir and ports on 127.0.0.1; ``head_address`` joins a head (None: this is the head)."""

    def __init__(self, label: str, temp_dir: Path, *, head_address: str | None = None, num_cpus: int = 1,
                 hide: Path | None = None) -> None:
        self.label, self.temp_dir, self.hide = label, temp_dir, hide
        self.head_address = head_address
        ports = free_ports(9)
        self.port = ports[0]  # the head's GCS port (unused on a worker node)
        self.address = head_address or f"127.0.0.1:{self.port}"
        self.num_cpus = num_cpus
        self._ports = ports
        self.process: subprocess.Popen | None = None
        self.node_id: str | None = None

    def start(self) -> None:
        temp = self.temp_dir
        temp.mkdir(parents=True, exist_ok=True)
        p = self._ports
        # ports of every service given: the benchmark's Ray on this machine holds the defaults
        command = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus),
                   "--num-gpus", "0", "--resources", json.dumps({self.label: 1}), "--temp-dir", str(temp),
                   "--node-manager-port", str(p[1]), "--object-manager-port", str(p[2]),
                   "--min-worker-port", "0", "--max-worker-port", "0",
                   "--dashboard-agent-listen-port", str(p[3]), "--dashboard-agent-grpc-port", str(p[4]),
                   "--runtime-env-agent-port", str(p[5]), "--metrics-export-port", str(p[6]),
                   "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats"]
        if self.head_address is None:
            # no --ray-client-server-port: it needs ray[client], which this install lacks
            # the head's dashboard process runs even without the UI: its port is given too
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--dashboard-port", str(p[7])]
        else:
            command += ["--address", self.head_address]
        if self.hide is not None:
            # a disk this node does not share: in its own mount namespace an empty tmpfs covers
            # ``hide``, so what the driver writes there is not seen here (as on another machine)
            self.hide.mkdir(parents=True, exist_ok=True)
            command = ["unshare", "--user", "--map-current-user", "--mount", "sh", "-c",
                       'mount -t tmpfs none "$0" && exec "$@"', str(self.hide), *command]
        self.log = temp / "ray-start.log"
        self.process = subprocess.Popen(command, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **RAY_ENV}, start_new_session=True)

    def raylet(self) -> int:
        """The pid of this node's raylet (killing it takes the node out of the cluster)."""
        for pid in descendants(self.process.pid):
            if process_name(pid) == "raylet":
                return pid
        raise AssertionError(f"no raylet under {self.process.pid}")

    def worker_pids(self) -> set[int]:
        """Pids of the Ray workers this node ever started (from their log file names)."""
        logs = Path(self.temp_dir) / "session_latest" / "logs"
        return {int(path.stem.rsplit("-", 1)[-1]) for path in logs.glob("worker-*.out")
                if path.stem.rsplit("-", 1)[-1].isdigit()}

    def kill(self) -> None:
        _kill_tree(self.process)
        self.process = None


class RayCluster:
    """A head ``node_a`` and a worker node ``node_b``, one CPU each, on 127.0.0.1. ``hidden``:
    a folder the head (and this process) sees and ``node_b`` does not (its own empty tmpfs)."""

    def __init__(self, folder: Path) -> None:
        self.hidden = folder / "hidden"
        self.head = RayNode("node_a", folder / "a")
        self.worker = RayNode("node_b", folder / "b", head_address=self.head.address, hide=self.hidden)
        self.address = self.head.address

    def start(self, timeout: float = 300) -> None:
        self.start_head(timeout)
        self.add_worker(timeout)

    def start_head(self, timeout: float = 300) -> None:
        """Start the head node alone (a one-node cluster until :meth:`add_worker`)."""
        # ``ray start`` with token auth refuses to run without a token; a fresh machine has one only
        # once some ray.init made it (in a whole-suite run an earlier test does, not when this
        # module runs alone); --generate keeps an existing token
        subprocess.run([str(RAY), "get-auth-token", "--generate"], check=True, capture_output=True,
                       env={**os.environ, **RAY_ENV}, timeout=60)
        self.head.start()
        self.wait_for_nodes(1, timeout)

    def add_worker(self, timeout: float = 300) -> None:
        self.worker.start()
        nodes = self.wait_for_nodes(2, timeout)
        by_label = {label: node["NodeID"] for node in nodes for label in ("node_a", "node_b")
                    if label in node["Resources"]}
        self.head.node_id, self.worker.node_id = by_label["node_a"], by_label["node_b"]

    def wait_for_nodes(self, count: int, timeout: float) -> list[dict]:
        """The cluster's alive nodes once ``count`` are up, asked from a short driver process."""
        probe = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                 "print(json.dumps([n for n in ray.nodes() if n['Alive']]))") % self.address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in (self.head, self.worker):
                if node.process is not None and node.process.poll() is not None:
                    raise AssertionError(f"ray start exited: {node.log.read_text()[-3000:]}")
            try:
                proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90,
                                      env={**os.environ, **RAY_ENV})
            except subprocess.TimeoutExpired:  # ray.init waits for a GCS that is not up yet
                continue
            if proc.returncode == 0:
                nodes = json.loads(proc.stdout.strip().splitlines()[-1])
                if len(nodes) >= count:
                    return nodes
            time.sleep(2)
        raise AssertionError(f"{count} Ray node(s) not up in {timeout} s")

    def kill(self) -> None:
        self.worker.kill()
        self.head.kill()


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port``, its sqlite store and artifacts in ``folder``
    (kept across restarts); killed with its worker processes (its own process group)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server did not start in {timeout} s")

    def kill(self) -> None:
        _kill_tree(self.process)
        self.process = None
