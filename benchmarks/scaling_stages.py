"""How ``benchmarks/scaling.py`` measures one stage: on which device (``--device``, ``--amp``),
wall seconds (CUDA kernels waited for before each clock read), the resident set size sampled on a
thread, on CUDA the peak of ``torch.cuda.max_memory_allocated``, and a time limit; a failing or
stopped stage is one line."""
from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

MIB = 2**20


class StageTimeout(Exception):
    """A stage ran past ``--stage-timeout``."""


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synchronize(device) -> None:
    """Wait for ``device``'s queued kernels (a CUDA device; nothing to wait for elsewhere), so that
    a clock read after it counts them."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def device_name(device) -> str:
    """The card's name on CUDA (``torch.cuda.get_device_name``), else the processor's."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def resolve_placement(args):
    """The :class:`torch.device` of ``--device``, with ``--amp`` checked against it; a device this
    machine lacks, or ``--amp`` off CUDA, raises the product's one-line ``InputError``."""
    from pruning.devices import check_amp, resolve_device

    device = resolve_device(args.device)
    check_amp(args.amp, device)
    return device


class PeakRss:
    """Samples the resident set size every ``interval`` seconds on a thread, while in ``with``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class PeakCudaMemory:
    """``torch.cuda.max_memory_allocated`` over the ``with`` block (its peak is reset on entry) and
    its increase over the allocation at entry; on a device that is not CUDA it measures nothing."""

    def __init__(self, device) -> None:
        self.device = device if device is not None and device.type == "cuda" else None
        self.start = self.peak = 0

    def __enter__(self) -> PeakCudaMemory:
        if self.device is not None:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device is not None:
            import torch

            self.peak = torch.cuda.max_memory_allocated(self.device)

    def record(self) -> dict:
        if self.device is None:
            return {}
        return {"peak_cuda_mib": self.peak / MIB, "cuda_increase_mib": (self.peak - self.start) / MIB}


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (between Python bytecodes:
    a long single torch call finishes first)."""
    def expire(signum, frame):
        raise StageTimeout(f"stopped after {seconds:g} s (--stage-timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class StageRecorder:
    """Runs stages under the memory samplers and the time limit; records seconds, memory or the
    error. ``device``: the :class:`torch.device` the stages run on (None: the CPU)."""

    timeout: float
    stages: dict = field(default_factory=dict)
    device: object = None

    def run(self, name: str, fn, record: bool = True):
        """``fn()``'s result, or None when it failed (the one-line error is recorded)."""
        synchronize(self.device)  # the previous stage's kernels are not this stage's
        started, rss, cuda, result, error = time.perf_counter(), PeakRss(), PeakCudaMemory(self.device), None, None
        try:
            with rss, cuda, time_limit(self.timeout):
                result = fn()
                synchronize(self.device)
        except Exception as failure:  # any failure is this stage's result, not the benchmark's end
            error = failure
        seconds = time.perf_counter() - started
        print(f"  {name}: {one_line(error) if error else f'{seconds:.2f} s'}", file=sys.stderr, flush=True)
        if record:
            self.stages[name] = {"seconds": seconds, "peak_rss_mib": rss.peak / MIB,
                                 "rss_increase_mib": (rss.peak - rss.start) / MIB, **cuda.record()}
            if error is not None:  # a stopped stage's seconds (and ratio) are a lower bound
                self.stages[name].update(error=one_line(error), timed_out=isinstance(error, StageTimeout))
        return result

    def skip(self, name: str, reason: str) -> None:
        self.stages[name] = {"error": f"skipped: {reason}", "timed_out": False}
