"""A run directory holds one live sweep or study: a second driver is refused at once naming the
holder; a lock left by a killed driver is taken over with one line; a released lock leaves no file."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from orchestrator.experiment import ConfigError
from orchestrator.experiment.lock import LOCK_FILE, RunDirLock


def test_a_second_driver_is_refused_naming_the_holder(tmp_path, lock_holder):
    holder = lock_holder(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        RunDirLock(tmp_path, "sweep").acquire()
    assert time.perf_counter() - started < 5
    message = str(refused.value)
    assert "\n" not in message and "in use by a running sweep" in message
    assert f"pid {holder.pid}" in message and "host " in message and "started " in message


def test_the_lock_of_a_killed_driver_is_taken_over_with_one_line(tmp_path, capsys, lock_holder):
    holder = lock_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
    with RunDirLock(tmp_path, "study") as lock:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "taking over" in err[0] and f"pid {holder.pid}" in err[0]
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_released_lock_can_be_taken_again_in_the_same_process(tmp_path, capsys):
    for _ in range(2):
        with RunDirLock(tmp_path):
            with pytest.raises(ConfigError, match="in use"):
                RunDirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    assert capsys.readouterr().err == ""

