"""The model zoo: every registered model builds by name, runs on MNIST- and CIFAR-shaped inputs,
has the published size, and can be pruned by Torch-Pruning; bad names, options and input
shapes fail with clear errors."""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pruning.models import (
    InputShapeError,
    UnknownNameError,
    check_input_shape,
    create_model,
    list_models,
    register_model,
)

ALL_MODELS = list_models()
#: the models with per-pixel outputs (every other one is an image classifier)
SEGMENTERS = ["unet-small"]
CLASSIFIERS = [name for name in ALL_MODELS if name not in SEGMENTERS]
CIFAR_MODELS = [name for name in CLASSIFIERS if name != "resnet50"]


def _final_classifier(model: nn.Module) -> nn.Linear:
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1]


def _batch_size(name: str) -> int:
    return 1 if name == "resnet50" else 2


def test_registry_lists_the_zoo() -> None:
    expected = {"resnet20", "resnet56", "resnet110", "vgg16", "mobilenet_v1", "alexnet_cifar", "resnet50"}
    assert expected <= set(ALL_MODELS)
    assert ALL_MODELS == sorted(ALL_MODELS)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize(
    ("in_channels", "size", "num_classes"), [(1, 28, 7), (3, 32, 10)], ids=["1x28x28", "3x32x32"]
)
def test_output_shape(name: str, in_channels: int, size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels).eval()
    batch = _batch_size(name)
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, size, size))
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenters_give_per_pixel_logits_and_prune(name: str) -> None:
    from pruning.criteria import create_criterion
    from pruning.pipeline import prune_with_criterion
    from pruning.planning import PruningConfig

    torch.manual_seed(0)
    model = create_model(name, num_classes=11, in_channels=1).eval()
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        assert model(x).shape == (2, 11, 56, 56)
    outcome = prune_with_criterion(model, x[:1], create_criterion("l1"), PruningConfig(flops_reduction=0.5))
    assert 0.45 < outcome.planned_reduction < 0.55
    with torch.no_grad():
        assert outcome.model(x).shape == (2, 11, 56, 56)


def test_resnet50_runs_on_imagenet_size() -> None:
    model = create_model("resnet50", num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("name", "expected_parameters"),
    # Published counts; the option-B projection shortcuts add about 2.8k to the ResNets.
    [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("vgg16", 14.7e6)],
)
def test_parameter_count(name: str, expected_parameters: float) -> None:
    model = create_model(name, num_classes=10, in_channels=3)
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == pytest.approx(expected_parameters, rel=0.03)


def test_classifier_is_the_last_module_called() -> None:
    for name in CIFAR_MODELS:
        model = create_model(name, num_classes=5).eval()
        called: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda m, i, o: called.append(m)) for m in model.modules()
                 if not list(m.children())]
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        assert called[-1] is _final_classifier(model), name
        assert called[-1].out_features == 5


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_torch_pruning_can_prune(name: str) -> None:
    torch.manual_seed(0)
    size = 64 if name == "resnet50" else 32
    model = create_model(name, num_classes=10).eval()
    example_inputs = torch.randn(1, 3, size, size)
    parameters_before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.3,
        ignored_layers=[_final_classifier(model)],
    )
    pruner.step()
    with torch.no_grad():
        out = model(example_inputs)
    assert out.shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.7 * parameters_before
    assert _final_classifier(model).out_features == 10


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as raised:
        create_model("nope")
    message = str(raised.value)
    assert "nope" in message
    assert all(name in message for name in ALL_MODELS)


def test_unknown_option_raises_type_error() -> None:
    with pytest.raises(TypeError, match="width"):
        create_model("resnet20", width=2)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="resnet20"):
        register_model("resnet20")(lambda num_classes=10, in_channels=3: nn.Identity())


def test_channel_mismatch_names_expected_channels() -> None:
    model = create_model("resnet20", in_channels=1)
    with pytest.raises(InputShapeError) as raised:
        check_input_shape(model, (3, 28, 28), name="resnet20")
    message = str(raised.value)
    assert "\n" not in message
    assert "resnet20" in message and "3x28x28" in message
    assert "expects 1 input channel" in message


def test_matching_shape_passes() -> None:
    check_input_shape(create_model("vgg16"), (3, 32, 32))


def test_too_small_input_raises(tiny_cnn: nn.Module) -> None:
    # Every zoo model pads enough to run even on 1x1 inputs; TinyCNN's floor-mode 2x2 max
    # pool cannot, which is the failure check_input_shape must report.
    with pytest.raises(InputShapeError) as raised:
        check_input_shape(tiny_cnn, (1, 1, 1), name="tiny_cnn")
    message = str(raised.value)
    assert "\n" not in message
    assert "tiny_cnn" in message and "1x1x1" in message
    assert "expects" not in message  # the channel count is right, so it is not blamed


def test_zero_size_input_raises_for_zoo_model() -> None:
    with pytest.raises(InputShapeError, match="resnet20 .*3x1x0"):
        check_input_shape(create_model("resnet20"), (3, 1, 0), name="resnet20")


def test_check_input_shape_restores_modes() -> None:
    model = create_model("resnet20").train()
    model.layer2.eval()
    check_input_shape(model, (3, 32, 32))
    assert model.training and model.layer1.training
    assert not model.layer2.training and not model.layer2[0].bn1.training
    with pytest.raises(InputShapeError):
        check_input_shape(model, (1, 32, 32))
    assert model.training and not model.layer2.training
