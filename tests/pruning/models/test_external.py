"""Models from outside the registry: ``torchvision:<name>``, ``timm:<name>`` and import paths,
each built with the dataset's classes and channels, and each bad name or option one line."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.models import ModelSourceError, UnknownNameError, check_model_name, create_model, is_external
from pruning.structure.prunable import check_prunable
from user_models import UserCNN


def _one_line_error(name: str, **options) -> str:
    with pytest.raises(InputError) as raised:
        create_model(name, num_classes=10, in_channels=1, **options)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_kinds_of_names():
    assert not is_external("resnet20")
    assert all(is_external(n) for n in ("torchvision:resnet18", "timm:resnet18", "user_models:tiny_cnn"))


def test_torchvision_model_is_built_for_the_dataset_and_prunable():
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=7, in_channels=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    # in-place activations are switched off, so hooks on a BatchNorm see its own output
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    space = check_prunable(model, (1, 32, 32), "torchvision:resnet18")
    assert "conv1" in space.call_order and len(space.groups) > 5


def test_torchvision_options_are_passed_and_weights_refused():
    model = create_model("torchvision:mobilenet_v2", num_classes=3, in_channels=3, width_mult=0.5)
    assert model.features[0][0].out_channels == 16  # 32 at width 1.0
    assert "download" in _one_line_error("torchvision:resnet18", weights="DEFAULT")
    assert "could not be built" in _one_line_error("torchvision:resnet18", depth=3)


def test_unknown_torchvision_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as raised:
        create_model("torchvision:resnet181")
    message = str(raised.value)
    assert "'resnet181'" in message and "resnet18" in message and "\n" not in message
    assert "list_models" in _one_line_error("torchvision:zzzzzz")


def test_timm_model():
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=5, in_channels=1)
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    check_prunable(model, (1, 32, 32), "timm:resnet18")
    message = _one_line_error("timm:resnet181")
    assert "unknown timm model 'resnet181'" in message and "resnet18" in message
    assert "download" in _one_line_error("timm:resnet18", pretrained=True)


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    message = _one_line_error("timm:resnet18")
    assert "pip install 'prunesweep[timm]'" in message
    with pytest.raises(ModelSourceError):
        check_model_name("timm:resnet18")


def test_import_path_factory_gets_classes_channels_and_options():
    model = create_model("user_models:tiny_cnn", num_classes=4, in_channels=3, width=2)
    assert isinstance(model, UserCNN)
    assert model.features[0].in_channels == 3 and model.features[0].out_channels == 2
    assert model.classifier.out_features == 4
    # an nn.Module class works as a factory too
    assert isinstance(create_model("user_models:UserCNN", num_classes=4), UserCNN)


def test_import_path_factory_without_data_arguments():
    """num_classes / in_channels are passed only where the factory accepts them."""
    model = create_model("user_models:ten_class_cnn", num_classes=10, in_channels=1, width=3)
    assert model.classifier.out_features == 10 and model.features[0].out_channels == 3


@pytest.mark.parametrize("name, options, needles", [
    ("nomodule_xyz:build", {}, ["cannot import 'nomodule_xyz'", "No module named"]),
    ("user_models:nope", {}, ["'user_models' has no attribute 'nope'"]),
    ("user_models:not_a_model", {}, ["returned 'int'", "not a torch.nn.Module"]),
    ("user_models:torch", {}, ["module", "not a function or nn.Module class"]),
    ("user_models:tiny_cnn", {"depth": 2}, ["unknown option(s) depth", "valid: width"]),
    ("subprocess:run", {}, ["standard-library"]),
    ("user_models:", {}, ["not an import path"]),
])
def test_bad_import_paths(name, options, needles):
    message = _one_line_error(name, **options)
    for needle in needles:
        assert needle in message, message
    if "returned" not in message:  # what a factory returns is only known once it is called
        with pytest.raises(InputError):
            check_model_name(name, options)  # the same refusal, before anything is built


def test_check_model_name_refuses_data_options():
    for name in ("user_models:tiny_cnn", "torchvision:resnet18", "resnet20"):
        with pytest.raises(InputError, match="'in_channels' comes from the dataset"):
            check_model_name(name, {"in_channels": 3})


def test_check_model_name_on_registered_models():
    check_model_name("resnet20")
    with pytest.raises(InputError, match="unknown option"):
        check_model_name("resnet20", {"width": 2})
    with pytest.raises(UnknownNameError):
        check_model_name("nope")


def test_registered_models_keep_their_type_error():
    with pytest.raises(TypeError, match="width"):
        create_model("resnet20", width=2)
    assert isinstance(create_model("resnet20", in_channels=1), nn.Module)
