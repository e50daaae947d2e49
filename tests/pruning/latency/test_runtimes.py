"""The runtime registry's contract, checked for every registered runtime: a one-line reason
where it cannot run, positive finite timings where it can, and one-line refusals of bad targets."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.latency import (
    DEVICES, LatencyRuntime, LatencyTarget, LayerShape, RuntimeUnavailableError, check_available, create_runtime,
    list_runtimes, register_runtime,
)
from pruning.structure.measure import LatencyResult

SHAPE = (3, 12, 12)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(SHAPE[0], 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def available(name: str, device: str = "cpu") -> LatencyTarget:
    """A short target for ``name`` on ``device``; skips the test where that cannot run here."""
    target = LatencyTarget(name, device, batch=2, threads=1, warmup=1, repeats=3)
    reason = create_runtime(name).unavailable(target)
    if reason is not None:
        pytest.skip(f"{name} on {device}: {reason}")
    return target


def test_the_registry_holds_the_shipped_runtimes():
    assert {"onnxruntime", "torch", "tensorrt"} <= set(list_runtimes())
    assert list_runtimes() == sorted(list_runtimes())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_runtimes())
def test_unavailable_is_none_or_one_line(name, device):
    runtime = create_runtime(name)
    assert isinstance(runtime, LatencyRuntime) and runtime.name == name
    reason = runtime.unavailable(LatencyTarget(name, device))
    assert reason is None or (isinstance(reason, str) and reason.strip() and "\n" not in reason)


@pytest.mark.parametrize("name", list_runtimes())
def test_a_layer_takes_a_positive_finite_time(name):
    target = available(name)
    for layer in (LayerShape(8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 12, 12),
                  LayerShape(8, 8, (3, 3), (2, 2), (1, 1), (1, 1), 8, 12, 12),  # depthwise, strided
                  LayerShape(7, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 6, 6)):  # unaligned widths
        ms = create_runtime(name).time_layer(layer, target)
        assert isinstance(ms, float) and math.isfinite(ms) and ms > 0


@pytest.mark.parametrize("name", list_runtimes())
def test_a_model_is_timed_on_the_targets_batch_threads_and_repeats(name):
    target = available(name)
    model = tiny_net().train()
    result = create_runtime(name).time_model(model, SHAPE, target)
    assert isinstance(result, LatencyResult)
    assert math.isfinite(result.median_ms) and 0 < result.min_ms <= result.median_ms <= result.max_ms
    assert (result.batch_size, result.threads, result.repeats) == (target.batch, target.threads, target.repeats)
    assert model.training and next(model.parameters()).device.type == "cpu"  # left as it was


@pytest.mark.parametrize("name, device", [("tensorrt", "cpu"), ("onnxruntime", "cuda"), ("torch", "cuda")])
def test_an_unavailable_target_is_one_line_naming_runtime_and_device(name, device):
    target = LatencyTarget(name, device)
    if create_runtime(name).unavailable(target) is None:
        pytest.skip(f"{name} runs on {device} on this machine")
    with pytest.raises(RuntimeUnavailableError) as info:
        check_available(target)
    message = str(info.value)
    assert "\n" not in message and f"{name} on {device}" in message
    assert isinstance(info.value, InputError)  # the CLI shows it as a one-line input error


def test_tensorrt_runs_on_a_gpu_only():
    reason = create_runtime("tensorrt").unavailable(LatencyTarget("tensorrt", "cpu"))
    assert reason is not None and "cuda" in reason


@pytest.mark.parametrize("name", list_runtimes())
def test_an_available_target_returns_its_runtime(name):
    target = available(name)
    runtime = check_available(target)
    assert isinstance(runtime, LatencyRuntime) and runtime.name == name


def test_a_duplicate_runtime_name_is_refused():
    before = list_runtimes()

    class Again(LatencyRuntime):
        def unavailable(self, target):
            return None

        def time_layer(self, layer, target):
            return 1.0

        def time_model(self, model, input_shape, target):
            raise NotImplementedError

    with pytest.raises(ValueError, match="'torch' is already registered"):
        register_runtime("torch")(Again)
    assert list_runtimes() == before and type(create_runtime("torch")).__name__ == "TorchRuntime"


def test_an_unknown_runtime_lists_the_valid_ones():
    with pytest.raises(InputError) as info:
        LatencyTarget("openvino")
    message = str(info.value)
    assert "'openvino'" in message and "\n" not in message
    assert all(name in message for name in list_runtimes())
    with pytest.raises(InputError, match="valid: "):
        create_runtime("openvino")


@pytest.mark.parametrize("options, bad", [
    ({"device": "tpu"}, "'tpu'"), ({"device": "CPU"}, "'CPU'"),
    ({"batch": 0}, "batch"), ({"batch": 1.5}, "batch"), ({"batch": True}, "batch"),
    ({"threads": 0}, "threads"), ({"threads": "2"}, "threads"),
    ({"repeats": 0}, "repeats"), ({"repeats": None}, "repeats"), ({"warmup": -1}, "warmup"),
])
def test_a_bad_target_is_one_line(options, bad):
    with pytest.raises(InputError) as info:
        LatencyTarget("torch", **options)
    message = str(info.value)
    assert bad in message and repr(next(iter(options.values()))) in message and "\n" not in message


def test_a_target_round_trips_and_describes_itself_in_one_line():
    target = LatencyTarget("onnxruntime", "cpu", batch=4, threads=2, warmup=0, repeats=7)
    assert LatencyTarget(**target.to_dict()) == target
    line = target.describe()
    assert "\n" not in line and all(part in line for part in ("onnxruntime", "cpu", "batch 4", "2 thread", "7 runs"))
