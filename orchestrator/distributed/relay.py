"""A way out of the private network namespace to the host's loopback, for a tracking server only.

Why: inside the namespace (:mod:`.network`) ``127.0.0.1`` is the namespace's own loopback, so an
MLflow server the user started on the host's ``127.0.0.1`` cannot be reached, and MLflow's
client retries for minutes before it says so. Before entering the namespace,
:func:`start` forks a helper that stays on the host network and listens on a Unix socket in a
private (0700) directory: a socket bound to a path is reachable from any network namespace.
Inside, :func:`forward` listens on the tracking server's loopback address and port and carries
each connection through the helper to the same name and port on the host. The helper connects
to loopback names only, so the namespace still has no route to another host; and only ports
that :func:`forward` was asked for listen inside.

The helper exits when the process that started it does (it watches a pipe whose write end only
that process holds). Standard library only: imported before the namespace is entered.
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import socket
import tempfile
import threading

RELAY_ENV = "PRUNESWEEP_HOST_RELAY"
#: names the helper connects to (the host side of a forwarded port)
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: how long the helper waits for the host's server to accept a connection
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 65536
_lifeline: int | None = None  # the write end of the helper's pipe, held by the starting process
_helper: int | None = None  # the helper's pid
_forwarded: dict[tuple[str, int], socket.socket] = {}  # (bound address, port): listener
_lock = threading.Lock()


def start() -> str:
    """Fork the host-side helper (call before entering the namespace, from a single-threaded
    process); returns its socket path, also put in ``$PRUNESWEEP_HOST_RELAY``."""
    global _helper, _lifeline
    folder = tempfile.mkdtemp(prefix="prunesweep-relay-")  # 0700: only this user may connect
    path = os.path.join(folder, "relay.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: never returns into the caller's code
        try:
            os.close(write_end)
            _detach()
            _serve(listener, read_end)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            os._exit(0)
    os.close(read_end)
    listener.close()
    _helper, _lifeline = pid, write_end
    os.environ[RELAY_ENV] = path
    return path


def stop() -> None:
    """Let the helper exit now (the namespace was refused: nothing will use it)."""
    global _helper, _lifeline
    if _lifeline is not None:
        os.close(_lifeline)
        _lifeline = None
    if _helper is not None:
        try:
            os.waitpid(_helper, 0)  # it exits at once on the closed pipe; no zombie left behind
        except ChildProcessError:
            pass
        _helper = None
    os.environ.pop(RELAY_ENV, None)


def available() -> bool:
    return bool(os.environ.get(RELAY_ENV))


def check(host: str, port: int) -> None:
    """Connect to ``host:port`` on the host through the helper and hang up; raises
    :class:`OSError` (the host side's errno and reason) when nothing answers there."""
    _open(host, port).close()


def forward(host: str, port: int) -> None:
    """Make ``host:port`` (a loopback name) inside this namespace lead to the same name and port
    on the host. Idempotent; raises :class:`OSError` when there is no helper or the port is taken."""
    if host not in LOOPBACK_NAMES:
        raise OSError(f"only loopback addresses are relayed, not {host!r}")
    if not available():
        raise OSError(f"no host relay in this process (${RELAY_ENV} is not set)")
    with _lock:
        listeners = []
        for family, address in _bind_addresses(host):
            if (address, port) in _forwarded:  # e.g. 127.0.0.1 already forwarded for "localhost"
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
                sock.listen(64)
            except OSError:
                sock.close()
                if address != "::1":  # IPv6 may be off in the namespace; IPv4 must work
                    for _, other in listeners:
                        other.close()
                    raise
                continue
            listeners.append((address, sock))
        for address, sock in listeners:
            threading.Thread(target=_accept, args=(sock, host, port), daemon=True,
                             name=f"relay-{address}:{port}").start()
            _forwarded[(address, port)] = sock


def _bind_addresses(host: str) -> list[tuple[int, str]]:
    if host == "::1":
        return [(socket.AF_INET6, "::1")]
    if host == "localhost":  # clients try both; each must find the port inside
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    return [(socket.AF_INET, "127.0.0.1")]


def _accept(listener: socket.socket, host: str, port: int) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_carry, args=(client, host, port), daemon=True).start()


def _carry(client: socket.socket, host: str, port: int) -> None:
    try:
        upstream = _open(host, port)
    except OSError:
        client.close()  # the client sees a closed connection, as from a server that went away
        return
    _pipe(client, upstream)


def _open(host: str, port: int) -> socket.socket:
    """A connection through the helper to ``host:port`` on the host, past its status line."""
    path = os.environ.get(RELAY_ENV)
    if not path:
        raise OSError(f"no host relay in this process (${RELAY_ENV} is not set)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S + 5)
        sock.connect(path)
        sock.sendall(f"{host} {port}\n".encode())
        code, _, reason = _read_line(sock).partition(" ")
        if code != "0":
            raise OSError(int(code) if code.isdigit() else 0, reason or "the host relay gave no reason")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


# -- the helper, on the host network ----------------------------------------------------------------


def _detach() -> None:
    """No terminal signals, no inherited output: the helper ends only when its starter does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _serve(listener: socket.socket, lifeline: int) -> None:
    while True:
        ready, _, _ = select.select([listener, lifeline], [], [])
        if lifeline in ready:  # EOF: the starting process is gone
            return
        conn, _ = listener.accept()
        threading.Thread(target=_connect_for, args=(conn,), daemon=True).start()


def _connect_for(conn: socket.socket) -> None:
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        host, _, port = _read_line(conn).partition(" ")
        if host not in LOOPBACK_NAMES or not port.isdigit():
            conn.sendall(f"{errno.EACCES} {host!r} is not a loopback address\n".encode())
            conn.close()
            return
        upstream = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        try:
            conn.sendall(f"{err.errno or 0} {err.strerror or err}\n".encode())
        except OSError:
            pass
        conn.close()
        return
    upstream.settimeout(None)
    conn.settimeout(None)
    conn.sendall(b"0 connected\n")
    _pipe(conn, upstream)


# -- both sides --------------------------------------------------------------------------------------


def _read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise OSError(0, "the host relay closed the connection")
        data += chunk
        if len(data) > 512:
            raise OSError(0, "the host relay sent a malformed line")
    return data.decode(errors="replace").strip()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished sending, then close both."""
    other = threading.Thread(target=_copy, args=(b, a), daemon=True)
    other.start()
    _copy(a, b)
    other.join()
    a.close()
    b.close()


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass
