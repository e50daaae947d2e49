"""onnxruntime as the deployment runtime: the CPU provider (the default target), CUDA, and
TensorRT through onnxruntime's TensorRT provider.

A layer is timed as a one-node ONNX graph built in memory (no exporter: a few milliseconds a
session), a model as the checked ONNX file :func:`pruning.export.export_model` writes. Sessions
use onnxruntime's default graph optimisations, as a deployment does.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
from torch import nn

from pruning.latency._base import (
    LatencyRuntime, LatencyTarget, LayerShape, alternate_rounds, register_runtime, time_on,
)
from pruning.structure.measure import InputShape, LatencyResult

__all__ = ["OnnxRuntime", "TensorRtRuntime"]

#: the ONNX opset of the one-layer graphs
_LAYER_OPSET = 17


@register_runtime("onnxruntime")
class OnnxRuntime(LatencyRuntime):
    """onnxruntime with the CPU provider (``device: cpu``) or the CUDA one (``device: cuda``)."""

    #: device -> the execution providers a session asks for, first preferred
    providers: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("CPUExecutionProvider",),
        "cuda": ("CUDAExecutionProvider",),
    }

    def unavailable(self, target: LatencyTarget) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        wanted = self.providers.get(target.device)
        if wanted is None:
            return f"{self.name} does not run on {target.device}; valid: {', '.join(self.providers)}"
        have = onnxruntime.get_available_providers()
        if wanted[0] not in have:
            return f"needs onnxruntime's {wanted[0]}; this machine has {', '.join(have)}"
        return None

    def session(self, model: bytes | str, target: LatencyTarget):
        """An inference session of ``model`` (serialised ONNX or a file path) for ``target``."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = target.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        return onnxruntime.InferenceSession(model, options, providers=list(self.providers[target.device]))

    def time_layer(self, layer: LayerShape, target: LatencyTarget) -> float:
        session = self.session(layer_graph(layer, target.batch), target)
        feed = {"x": np.zeros((target.batch, layer.in_channels, layer.height, layer.width), dtype=np.float32)}
        return time_on(lambda: session.run(None, feed), target).median_ms

    def time_model(self, model: nn.Module, input_shape: InputShape, target: LatencyTarget) -> LatencyResult:
        with tempfile.TemporaryDirectory(prefix="prunesweep-latency-") as folder:
            run = self._deployed(model, input_shape, target, Path(folder) / "model.onnx")
        return time_on(run, target)

    def time_models(self, models: Mapping[str, nn.Module], input_shape: InputShape, target: LatencyTarget,
                    rounds: int = 3) -> dict[str, float]:
        """Each model exported once, then timed in alternating rounds (see the base class)."""
        with tempfile.TemporaryDirectory(prefix="prunesweep-latency-") as folder:
            runs = {key: self._deployed(model, input_shape, target, Path(folder) / f"model{i}.onnx")
                    for i, (key, model) in enumerate(models.items())}
        return alternate_rounds({key: functools.partial(time_on, run, target) for key, run in runs.items()}, rounds)

    def _deployed(self, model: nn.Module, input_shape: InputShape, target: LatencyTarget, path: Path):
        """``model`` exported to ``path`` (checked against PyTorch) in a session: a call that runs
        one batch of zeros."""
        from pruning.export import INPUT_NAME, export_model

        export_model(model, input_shape, path, "onnx")
        session = self.session(str(path), target)
        feed = {INPUT_NAME: np.zeros((target.batch, *input_shape), dtype=np.float32)}
        return lambda: session.run(None, feed)


@register_runtime("tensorrt")
class TensorRtRuntime(OnnxRuntime):
    """TensorRT through onnxruntime's TensorRT provider (CUDA for the nodes it does not take); a
    GPU target only."""

    providers: ClassVar[dict[str, tuple[str, ...]]] = {
        "cuda": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    }


def layer_graph(layer: LayerShape, batch: int) -> bytes:
    """A serialised ONNX graph of the one convolution ``layer`` (random weights, no bias)."""
    from onnx import TensorProto, helper, numpy_helper

    per_group = layer.in_channels // layer.groups
    weights = np.random.default_rng(0).standard_normal(
        (layer.out_channels, per_group, *layer.kernel), dtype=np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=list(layer.kernel), strides=list(layer.stride),
        pads=[*layer.padding, *layer.padding], dilations=list(layer.dilation), group=layer.groups,
    )
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, layer.in_channels, layer.height, layer.width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _LAYER_OPSET)]).SerializeToString()
