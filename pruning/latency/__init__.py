"""Latency on the deployment runtime: targets, runtimes and the per-layer latency table a sweep
screens with (see :mod:`pruning.latency._base` and :mod:`pruning.latency.table`)."""
from pruning.latency._base import (
    DEVICES, LatencyRuntime, LatencyTarget, LayerShape, RuntimeUnavailableError, check_available, create_runtime,
    list_runtimes, register_runtime,
)
from pruning.latency.onnx_runtime import OnnxRuntime, TensorRtRuntime
from pruning.latency.table import LatencyTable, build_latency_table, grid_widths, layer_shapes
from pruning.latency.torch_runtime import TorchRuntime

__all__ = [
    "DEVICES", "LatencyRuntime", "LatencyTarget", "LayerShape", "RuntimeUnavailableError", "check_available",
    "create_runtime", "list_runtimes", "register_runtime", "OnnxRuntime", "TensorRtRuntime", "TorchRuntime",
    "LatencyTable", "build_latency_table", "grid_widths", "layer_shapes",
]
