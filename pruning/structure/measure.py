"""What a model costs: multiply-accumulates, parameters and CPU latency.

MACs are measured, not modelled: :func:`count_macs` runs one forward pass under
``torch.utils.flop_counter.FlopCounterMode`` and halves the FLOPs it counts. That counter sees
convolutions and matrix products (FLOPs = 2 x MACs) and ignores bias additions, BatchNorm,
activations and pooling, so the result is exactly the quantity the engine's analytic model
``pruning.structure.engine.PruningSpace.macs`` predicts, and a pruned model can be checked against its plan.

Latency (:func:`measure_latency`) is the median wall-clock time of repeated forward passes with a
fixed number of intra-op threads, after warm-up runs that absorb allocator and kernel-selection
start-up costs.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning.errors import InputError
from pruning.utils import model_device, preserved_modes

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelCost:
    """MACs of one batch-1 forward pass and the number of parameters."""

    macs: int
    params: int


@dataclass(frozen=True)
class LatencyResult:
    """Wall-clock time of one forward pass of a ``batch_size`` batch, over ``repeats`` timed runs."""

    median_ms: float
    min_ms: float
    max_ms: float
    batch_size: int
    threads: int
    repeats: int


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards (modes may be mixed)."""
    with preserved_modes(model):
        model.eval()
        yield model


def _check_input_shape(input_shape: InputShape) -> None:
    if len(input_shape) != 3 or any(not isinstance(s, int) or s < 1 for s in input_shape):
        raise InputError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of the first sample of ``example_input``.

    MACs = FLOPs / 2 as counted by ``FlopCounterMode`` over the executed torch ops (convolutions,
    including grouped ones, and matrix products; bias additions and elementwise ops are not
    counted). Runs in eval mode without gradients; the model's modes are restored.
    """
    single = example_input[:1]
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(single)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def measure_cost(model: nn.Module, input_shape: InputShape) -> ModelCost:
    """MACs of a batch-1 ``input_shape`` = (C, H, W) forward pass and the parameter count."""
    _check_input_shape(input_shape)
    example = torch.zeros(1, *input_shape, device=model_device(model))
    return ModelCost(macs=count_macs(model, example), params=count_params(model))


@contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(
    model: nn.Module,
    input_shape: InputShape,
    batch_size: int = 1,
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> LatencyResult:
    """Time forward passes of a ``batch_size`` x ``input_shape`` batch of zeros.

    Runs in eval mode under ``torch.inference_mode`` with ``threads`` intra-op threads (default:
    the current ``torch.get_num_threads()``); the previous thread count and the model's modes are
    restored. ``warmup`` untimed passes precede ``repeats`` timed ones; the median is the
    headline number because it ignores the occasional pass slowed by other processes.
    """
    _check_input_shape(input_shape)
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1 or None, got {threads}")
    check_timing(batch_size, warmup, repeats)
    threads = torch.get_num_threads() if threads is None else threads
    device = model_device(model)
    batch = torch.zeros(batch_size, *input_shape, device=device)

    def forward() -> None:
        model(batch)
        if device.type == "cuda":  # kernels run asynchronously: wait for them before stopping the clock
            torch.cuda.synchronize(device)

    with _num_threads(threads), _eval_mode(model), torch.inference_mode():
        return time_calls(forward, batch_size=batch_size, threads=threads, warmup=warmup, repeats=repeats)


def check_timing(batch_size: int, warmup: int, repeats: int) -> None:
    """One-line ``InputError`` unless batch_size >= 1, warmup >= 0 and repeats >= 1."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")


def time_calls(call, *, batch_size: int, threads: int, warmup: int, repeats: int) -> LatencyResult:
    """``warmup`` untimed calls of ``call()``, then the median (min, max) of ``repeats`` timed ones;
    ``batch_size`` and ``threads`` describe what was timed (set up by the caller)."""
    for _ in range(warmup):
        call()
    timings_ms: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings_ms.append((time.perf_counter() - start) * 1e3)
    return LatencyResult(
        median_ms=statistics.median(timings_ms),
        min_ms=min(timings_ms),
        max_ms=max(timings_ms),
        batch_size=batch_size,
        threads=threads,
        repeats=repeats,
    )
