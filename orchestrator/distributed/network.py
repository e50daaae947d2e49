"""Run a module inside a private network namespace that has only a loopback interface.

Why: Ray 2.60's core services (GCS, raylet, object manager, every worker's RPC server) bind the
wildcard address. Its ``GrpcServer`` listens on ``127.0.0.1`` only when told to listen to
localhost only, and no core service is started that way; no option or environment variable
changes it. A local Ray started inside a new user + network namespace sees one interface, the
namespace's own loopback, so none of its ports can be reached from another host whatever address
it binds. Unprivileged user namespaces need no root; Ray's workers inherit the namespace.

The namespace has no route out: a process inside cannot download data or reach a remote MLflow
server; a tracking server on the host's loopback is reached through :mod:`.relay`. ``prunesweep``
uses it only for runs that start a local Ray: ``--ray-network auto`` (the default) falls back to
the host network, with one line saying so, where the kernel does not allow it (macOS, most
container seccomp profiles, Ubuntu's AppArmor restriction); ``--ray-network private`` refuses
instead, with the reason.

    python -m orchestrator.distributed.network [--or-host] MODULE [ARGS ...]

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

from orchestrator.distributed import relay
from pruning.errors import InputError

#: "1" inside the namespace, "host" where the entry point fell back to the host network
ACTIVE_ENV = "PRUNESWEEP_PRIVATE_NETWORK"
_ON_HOST = "host"
#: the option of :func:`main` that runs the module on the host network when the namespace is refused
OR_HOST = "--or-host"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
EXIT_UNAVAILABLE = 2


class PrivateNetworkError(OSError, InputError):  # OSError first: its __init__ sets errno and strerror
    """The kernel refused the namespace (user namespaces disabled, seccomp, a threaded process).
    ``unshared``: the process had already left the host network (no way back)."""

    unshared = False


def enter() -> None:
    """Move this (single-threaded) process into a new user + network namespace with loopback up.

    The user keeps its uid and gid (mapped onto themselves), so files it writes are owned as
    usual. Raises :class:`PrivateNetworkError` naming the failing step.
    """
    if not sys.platform.startswith("linux"):
        raise PrivateNetworkError(errno.ENOSYS, f"network namespaces exist only on Linux, not on {sys.platform}")
    uid, gid = os.getuid(), os.getgid()
    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _bring_up("lo")
    except OSError as err:
        refused = PrivateNetworkError(err.errno, f"setting up the namespace failed: {err}")
        refused.unshared = True
        raise refused from err
    os.environ[ACTIVE_ENV] = "1"


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        raise PrivateNetworkError(code, f"unshare(user + network namespace) failed: {os.strerror(code)}")


def active() -> bool:
    """True inside a namespace made by :func:`enter` (in this process or an ancestor)."""
    return os.environ.get(ACTIVE_ENV) == "1"


def decided() -> bool:
    """True once :func:`main` chose this process's network: inside the namespace, or on the host
    after the kernel refused it (``--or-host``); the entry point then never re-executes again."""
    return os.environ.get(ACTIVE_ENV) in ("1", _ON_HOST)


def fallback_line(err: PrivateNetworkError) -> str:
    """The one line saying that Ray runs on the host network because the namespace was refused."""
    return (f"note: no private loopback-only network here ({err.strerror}): Ray runs on the host network, "
            "its ports on all interfaces, guarded by Ray's auth token; pass --ray-network private to stop "
            "instead, or --ray-network host to skip this attempt")


def interfaces() -> list[str]:
    """Names of the network interfaces this process can see."""
    return [name for _, name in socket.if_nameindex()]


def exec_module(module: str, args: list[str], *, fallback: bool = False) -> None:
    """Replace this process by ``python -m orchestrator.distributed.network module *args``;
    ``fallback``: run it on the host network where the namespace is refused (``--or-host``)."""
    os.execv(sys.executable, [sys.executable, "-m", __name__, *([OR_HOST] if fallback else []), module, *args])


def _enter_with_relay() -> None:
    """:func:`enter`, after a trial run in a forked child and with the host-side helper of
    :mod:`.relay` forked just before (once inside, nothing can start on the host network)."""
    if not sys.platform.startswith("linux"):
        enter()  # refuses before any system call
    refused = _trial_run()
    if refused is not None:
        raise refused
    try:
        relay.start()
    except OSError:  # e.g. a $TMPDIR too long for a socket path: host loopback servers then fail, one line
        relay.stop()
    try:
        enter()
    except PrivateNetworkError:
        relay.stop()
        raise


def _trial_run() -> PrivateNetworkError | None:
    """Why :func:`enter` fails, or None, found in a forked child: some kernels (Ubuntu's AppArmor
    restriction) allow ``unshare`` but not the uid map after it, and a process that got that far
    cannot return to the host network, so the attempt must not be made in this process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code, message = 0, ""
        try:
            enter()
        except PrivateNetworkError as err:
            code, message = err.errno or errno.EPERM, err.strerror or str(err)
        except BaseException as err:  # anything else is a refusal too; never return into the caller
            code, message = errno.EPERM, f"{type(err).__name__}: {err}"
        os.write(write_end, f"{code} {message}".encode()[:4000])
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read().decode(errors="replace")
    os.waitpid(pid, 0)
    code, _, message = report.partition(" ")
    if code == "0":
        return None
    return PrivateNetworkError(int(code) if code.isdigit() else errno.EPERM, message or "the trial run gave no reason")


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
    fallback = argv[:1] == [OR_HOST]
    if fallback:
        argv = argv[1:]
    if not argv:
        print(f"usage: python -m orchestrator.distributed.network [{OR_HOST}] MODULE [ARGS ...]", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        _enter_with_relay()
    except PrivateNetworkError as err:
        if not fallback or err.unshared:
            print(f"error: cannot confine Ray to a private loopback-only network ({err.strerror}); "
                  "pass --ray-network host to start Ray on this host's network instead "
                  "(its ports then listen on all interfaces, guarded by Ray's auth token)", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(fallback_line(err), file=sys.stderr, flush=True)
        os.environ[ACTIVE_ENV] = _ON_HOST
    module, *args = argv
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
