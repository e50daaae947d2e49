"""Checkpoints of models of one's own (torchvision:, timm:, import paths): the spec records the
name and options, pruned widths rebuild, and :func:`model_for_data` checks a model up front."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from pruning.models import UnknownNameError, WeightsError, create_model
from pruning.structure.prunable import UnprunableModelError
from pruning.structure import (
    CheckpointError, ModelSpec, PruningSpace, load_checkpoint, model_for_data, prune_model, save_checkpoint,
)

FMNIST = SimpleNamespace(name="fashion-mnist", num_classes=10, in_channels=1, input_size=(28, 28))


def _pruned(model, shape, fraction=0.5):
    example = torch.zeros(1, *shape)
    space = PruningSpace.build(model, example)
    keep = {g.name: max(1, int(g.size * (1 - fraction))) for g in space.groups}
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(0)) for g in space.groups}
    return prune_model(model, example, space, keep, scores)[0].eval(), keep


def test_spec_records_model_options_and_reads_old_specs():
    spec = ModelSpec("user_models:tiny_cnn", 10, 1, (1, 28, 28), kwargs={"width": 4})
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = json.loads(spec.to_json())
    del old["kwargs"]  # a checkpoint written before model options were recorded
    assert ModelSpec.from_json(json.dumps(old)).kwargs == {}
    with pytest.raises(CheckpointError, match="kwargs need a model name"):
        ModelSpec(None, 10, 1, (1, 28, 28), kwargs={"width": 4})


@pytest.mark.parametrize("name, kwargs, shape", [
    ("user_models:tiny_cnn", {"width": 6}, (1, 28, 28)),
    ("torchvision:resnet18", {}, (1, 32, 32)),
    ("torchvision:mobilenet_v2", {"width_mult": 0.25}, (1, 32, 32)),
])
def test_pruned_own_model_reloads_by_name(name, kwargs, shape, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, **kwargs).eval()
    pruned, keep = _pruned(model, shape)
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, ModelSpec(name, 10, 1, shape, kwargs=kwargs))
    loaded, spec = load_checkpoint(path)
    assert spec.name == name and spec.kwargs == kwargs
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)
    modules = dict(loaded.named_modules())
    assert all(modules[layer].out_channels == k for layer, k in keep.items() if hasattr(modules[layer], "out_channels"))


def test_timm_checkpoint_reloads(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm:resnet18", num_classes=10, in_channels=1).eval()
    pruned, _ = _pruned(model, (1, 32, 32))
    save_checkpoint(tmp_path / "t.pt", pruned, ModelSpec("timm:resnet18", 10, 1, (1, 32, 32)))
    loaded, _ = load_checkpoint(tmp_path / "t.pt")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)


def test_model_for_data_builds_loads_weights_and_checks(tmp_path):
    torch.manual_seed(0)
    source = create_model("user_models:tiny_cnn", 10, 1, width=4)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model, spec, shape = model_for_data("user_models:tiny_cnn", FMNIST, weights=tmp_path / "w.pt",
                                        kwargs={"width": 4}, meta={"note": 1})
    assert shape == (1, 28, 28) and not model.training
    assert spec.name == "user_models:tiny_cnn" and spec.kwargs == {"width": 4} and spec.meta == {"note": 1}
    assert spec.widths["features.0"] == {"in": 1, "out": 4, "groups": 1}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))


@pytest.mark.parametrize("name, kwargs, error, needle", [
    ("torchvision:resnet181", {}, UnknownNameError, "resnet18"),
    ("user_models:shuffled_cnn", {}, UnprunableModelError, "layer 'shuffle'"),
    ("user_models:tiny_cnn", {"width": 2}, WeightsError, "features.0.weight has shape 4x1x3x3 there, 2x1x3x3"),
])
def test_model_for_data_refuses_up_front(name, kwargs, error, needle, tmp_path):
    torch.save(create_model("user_models:tiny_cnn", 10, 1, width=4).state_dict(), tmp_path / "w.pt")
    weights = tmp_path / "w.pt" if name == "user_models:tiny_cnn" else None
    with pytest.raises(error) as raised:
        model_for_data(name, FMNIST, weights=weights, kwargs=kwargs)
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_model_for_data_refuses_a_model_with_other_classes():
    """A factory that takes no num_classes may output another number of classes than the data has."""
    five = SimpleNamespace(**{**vars(FMNIST), "num_classes": 5, "name": "five"})
    with pytest.raises(CheckpointError, match=r"outputs \(1, 10\).*needs \(1, 5\)"):
        model_for_data("user_models:ten_class_cnn", five)
