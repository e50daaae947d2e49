"""The processes of a local Ray end with the driver that started it, however the driver ends.

Why: ``ray.init`` starts the head's services (GCS, raylet, log monitor, API server) with
``PR_SET_PDEATHSIG``, so the kernel kills them with a killed driver; but the raylet's own
children, the dashboard and runtime-env agents, then find their raylet gone and try to report it
to the GCS, which is gone too: they stay for minutes. Ray 2.60 has nothing for them (its reaper
process runs only where the kernel cannot share the driver's fate).

:func:`start`, right after a local ``ray.init``, spawns this module as a small process that holds
the read end of a pipe whose write end only the driver holds. However the driver ends (a SIGKILL
included), that pipe closes; the watchdog then kills every process of this user that names the
Ray session's folder, and exits. A Ray process names it in its command line (the services) or
through the files it writes (its logs there: the agents and workers, whose command lines Ray
replaces by titles such as ``ray::DashboardAgent``). :func:`stop`, after ``ray.shutdown``, closes
the pipe and waits for that sweep, so that a normal or signalled exit leaves nothing behind. Only
a Ray the driver starts is watched: a cluster joined with ``--address`` is never touched.

Linux only (it reads ``/proc``; elsewhere it finds nothing to kill). Standard library only: it
runs as ``python -I watchdog.py SESSION_DIR DRIVER_PID``.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

#: how often the watchdog checks that its driver is still its parent, in case another process
#: inherited the pipe's write end (a child the driver forked) and keeps it open
POLL_S = 1.0
#: how long :func:`stop` waits for the sweep, and the sweep for a killed process to go
WAIT_S = 10.0
#: kill rounds: a raylet that dies while starting a worker may leave one behind after a round
ROUNDS = 3

_lifeline: int | None = None  # the write end of the watchdog's pipe, held by the driver only
_watchdog: subprocess.Popen | None = None


def start(session_dir: str) -> None:
    """Watch this process: when it ends, the processes of the Ray session in ``session_dir`` end too."""
    global _lifeline, _watchdog
    stop()
    read_end, write_end = os.pipe()  # not inherited by the processes spawned later
    try:
        # its own session: a Ctrl-C or a closed terminal reaches the driver's group, not the watchdog
        _watchdog = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), session_dir, str(os.getpid())],
                                     stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _lifeline = write_end


def stop() -> None:
    """Let the watchdog sweep now (after ``ray.shutdown``) and wait for it; nothing when none runs."""
    global _lifeline, _watchdog
    if _lifeline is not None:
        os.close(_lifeline)
        _lifeline = None
    if _watchdog is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _watchdog.wait(timeout=WAIT_S)
        _watchdog = None


def _names(pid: str, folder: str) -> bool:
    """Whether process ``pid`` names ``folder``: in its command line, or a file in it held open."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if folder.encode() in f.read():
            return True
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"{fds}/{fd}").startswith(folder + "/"):
                return True
    return False


def session_processes(session_dir: str) -> list[int]:
    """The pids of this user's processes that name ``session_dir`` (zombies name nothing)."""
    folder = session_dir.rstrip("/")
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone, or another user's
            if _names(name, folder):
                found.append(int(name))
    return found


def sweep(session_dir: str, spare: set[int]) -> None:
    """Kill (SIGKILL: their driver, and so their session, is gone) every process of the Ray
    session in ``session_dir`` but ``spare``, until none is left or :data:`ROUNDS` rounds passed."""
    for _ in range(ROUNDS):
        pids = [pid for pid in session_processes(session_dir) if pid not in spare]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and set(session_processes(session_dir)) & set(pids):
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    session_dir, driver = argv[0], int(argv[1])
    while os.getppid() == driver:
        ready, _, _ = select.select([0], [], [], POLL_S)
        if ready and not os.read(0, 1):  # end of file: the driver closed it, or ended
            break
    sweep(session_dir, {os.getpid(), driver})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
