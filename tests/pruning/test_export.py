"""Export to ONNX and TorchScript: the files run outside PyTorch with PyTorch's outputs, a pruned
model exports, and a model that cannot be exported or fails the check leaves no file behind."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export_models import NoisyCNN, ZetaCNN
from pruning.criteria import create_criterion
from pruning.export import (
    INPUT_NAME, OPSET, OUTPUT_NAME, TOLERANCE, CheckBatch, ExportError, Timing, export_model, exported_latency,
    onnx_session,
)
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig

SHAPE = (1, 28, 28)


def fresh_batch(n: int, seed: int = 7) -> torch.Tensor:
    """Inputs the export's own check never saw."""
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def reference(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    return onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def assert_only(folder, *names: str) -> None:
    """Exactly these files in ``folder``: no temporary file left over."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.mark.parametrize("fixture", ["tiny_resnet", "tiny_cnn"])
def test_onnx_export_runs_in_onnxruntime_with_pytorch_outputs_at_any_batch(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    path = tmp_path / "model.onnx"
    check = export_model(model, SHAPE, path, "onnx", check=CheckBatch(size=4))
    assert check.passed and check.format == "onnx" and check.batch_size == 4
    assert check.max_abs_diff <= check.tolerance == pytest.approx(TOLERANCE * max(1.0, check.logits_scale))
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == [INPUT_NAME] and [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert {op.domain: op.version for op in graph.opset_import}[""] == OPSET
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic: any batch size
    for n in (1, 3, 17):
        x = fresh_batch(n)
        np.testing.assert_allclose(run_onnx(path, x), reference(model, x), atol=1e-4, rtol=0)
    assert_only(tmp_path, "model.onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_reloads_with_pytorch_outputs(tiny_resnet, tmp_path):
    path = tmp_path / "model.pt"
    check = export_model(tiny_resnet, SHAPE, path, "torchscript")
    assert check.passed and check.format == "torchscript"
    loaded = torch.jit.load(str(path))
    for n in (1, 5):
        x = fresh_batch(n)
        np.testing.assert_allclose(reference(loaded, x), reference(tiny_resnet, x), atol=1e-5, rtol=0)
    assert_only(tmp_path, "model.pt")


def test_a_pruned_model_exports_and_the_model_keeps_its_modes(tiny_resnet, example_input, tmp_path):
    outcome = prune_with_criterion(tiny_resnet, example_input, create_criterion("l1"), PruningConfig(ratio=0.5))
    pruned = outcome.model.train()  # exported in eval mode, left as it was
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in tiny_resnet.parameters())
    export_model(pruned, SHAPE, tmp_path / "pruned.onnx", "onnx")
    assert pruned.training
    x = fresh_batch(6)
    np.testing.assert_allclose(run_onnx(tmp_path / "pruned.onnx", x), reference(pruned, x), atol=1e-4, rtol=0)


def test_exported_latency_times_the_file_at_each_batch_size(tiny_cnn, tmp_path):
    for fmt in ("onnx", "torchscript"):
        path = tmp_path / f"model.{fmt}"
        export_model(tiny_cnn, SHAPE, path, fmt)
        for batch in (1, 4):
            result = exported_latency(path, fmt, SHAPE, batch, Timing(threads=1, warmup=1, repeats=3))
            assert result.batch_size == batch and result.threads == 1 and result.repeats == 3
            assert 0 < result.min_ms <= result.median_ms <= result.max_ms


def test_an_operator_without_onnx_mapping_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError) as err:
        export_model(ZetaCNN(), SHAPE, tmp_path / "zeta.onnx", "onnx", what="model 'zeta'")
    message = str(err.value)
    assert "\n" not in message
    assert "model 'zeta' cannot be exported to ONNX" in message and "zeta" in message.split(":", 1)[1]
    assert_only(tmp_path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_does_not_match_pytorch_fails_the_check_and_writes_nothing(fmt, tmp_path):
    target = tmp_path / "noisy.bin"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match=f"the {fmt} export of the model does not match PyTorch: max abs difference"):
        export_model(NoisyCNN(), SHAPE, target, fmt)
    assert target.read_bytes() == b"old"  # the previous file stays
    assert_only(tmp_path, "noisy.bin")


def test_bad_arguments_are_refused_before_anything_is_written(tiny_cnn, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'; valid: onnx, torchscript"):
        export_model(tiny_cnn, SHAPE, tmp_path / "m", "tflite")
    with pytest.raises(ExportError, match="is a directory"):
        export_model(tiny_cnn, SHAPE, tmp_path, "onnx")
    with pytest.raises(ExportError, match="batch size must be >= 1"):
        export_model(tiny_cnn, SHAPE, tmp_path / "m", "onnx", check=CheckBatch(size=0))
    assert_only(tmp_path)
