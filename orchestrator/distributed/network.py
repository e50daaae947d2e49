"""Run a module inside a private network namespace that has only a loopback interface.

Why: Ray 2.60's core services (GCS, raylet, object manager, every worker's RPC server) bind the
wildcard address. Its ``GrpcServer`` listens on ``127.0.0.1`` only when told to listen to
localhost only, and no core service is started that way; no option or environment variable
changes it. A local Ray started inside a new user + network namespace sees one interface, the
namespace's own loopback, so none of its ports can be reached from another host whatever address
it binds. Unprivileged user namespaces need no root; Ray's workers inherit the namespace.

The namespace has no route out: a process inside cannot download data or reach a remote MLflow
server. ``prunesweep`` uses it only for runs that start a local Ray (``--ray-network private``,
the default) and refuses, with the reason, where the kernel does not allow it.

    python -m orchestrator.distributed.network MODULE [ARGS ...]

This module imports only the standard library: ``unshare(CLONE_NEWUSER)`` fails in a process
that already runs several threads, so nothing may start one before it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import runpy
import socket
import struct
import sys
from pruning.errors import InputError

ACTIVE_ENV = "PRUNESWEEP_PRIVATE_NETWORK"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
EXIT_UNAVAILABLE = 2


class PrivateNetworkError(OSError, InputError):  # OSError first: its __init__ sets errno and strerror
    """The kernel refused the namespace (user namespaces disabled, seccomp, a threaded process)."""


def enter() -> None:
    """Move this (single-threaded) process into a new user + network namespace with loopback up.

    The user keeps its uid and gid (mapped onto themselves), so files it writes are owned as
    usual. Raises :class:`PrivateNetworkError` naming the failing step.
    """
    if not sys.platform.startswith("linux"):
        raise PrivateNetworkError(errno.ENOSYS, f"network namespaces exist only on Linux, not on {sys.platform}")
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise PrivateNetworkError(code, f"unshare(user + network namespace) failed: {os.strerror(code)}")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _bring_up("lo")
    except OSError as err:
        raise PrivateNetworkError(err.errno, f"setting up the namespace failed: {err}") from err
    os.environ[ACTIVE_ENV] = "1"


def active() -> bool:
    """True inside a namespace made by :func:`enter` (in this process or an ancestor)."""
    return os.environ.get(ACTIVE_ENV) == "1"


def interfaces() -> list[str]:
    """Names of the network interfaces this process can see."""
    return [name for _, name in socket.if_nameindex()]


def exec_module(module: str, args: list[str]) -> None:
    """Replace this process by ``python -m orchestrator.distributed.network module *args``."""
    os.execv(sys.executable, [sys.executable, "-m", __name__, module, *args])


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _bring_up(interface: str) -> None:
    import fcntl  # POSIX only; this module is imported (not run) on every platform

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", interface.encode(), 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", interface.encode(), flags | _IFF_UP))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m orchestrator.distributed.network MODULE [ARGS ...]", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        enter()
    except PrivateNetworkError as err:
        print(f"error: cannot confine Ray to a private loopback-only network ({err.strerror}); "
              "pass --ray-network host to start Ray on this host's network instead "
              "(its ports then listen on all interfaces, guarded by Ray's auth token)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    module, *args = argv
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
