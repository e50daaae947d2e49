"""PyTorch eager as the deployment runtime: the model is timed as it is, a layer as one
``nn.Conv2d``, under :func:`pruning.structure.measure_latency`."""
from __future__ import annotations

import torch
from torch import nn

from pruning.latency._base import LatencyRuntime, LatencyTarget, LayerShape, register_runtime
from pruning.structure.measure import InputShape, LatencyResult, measure_latency

__all__ = ["TorchRuntime"]


@register_runtime("torch")
class TorchRuntime(LatencyRuntime):
    """PyTorch on the CPU or a CUDA GPU."""

    def unavailable(self, target: LatencyTarget) -> str | None:
        if target.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
        return None

    def time_layer(self, layer: LayerShape, target: LatencyTarget) -> float:
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding,
                         layer.dilation, layer.groups, bias=False)
        return self._time(conv, (layer.in_channels, layer.height, layer.width), target).median_ms

    def time_model(self, model: nn.Module, input_shape: InputShape, target: LatencyTarget) -> LatencyResult:
        return self._time(model, input_shape, target)

    @staticmethod
    def _time(module: nn.Module, input_shape: InputShape, target: LatencyTarget) -> LatencyResult:
        device = torch.device(target.device)
        original = next(module.parameters()).device
        try:
            return measure_latency(module.to(device), input_shape, target.batch, threads=target.threads,
                                   warmup=target.warmup, repeats=target.repeats)
        finally:
            module.to(original)
