"""The model zoo: CIFAR-size ResNets, VGG-16, MobileNetV1 and AlexNet, plus torchvision's
ResNet-50, all built by name through one registry.

Importing this package imports every model module so that their factories register.
"""
from pruning.registry import UnknownNameError
from pruning.models import alexnet, mobilenet, resnet_cifar, torchvision_models, vgg  # noqa: F401  (registers)
from pruning.models._registry import (
    InputShapeError,
    check_input_shape,
    create_model,
    list_models,
    register_model,
)

__all__ = [
    "InputShapeError",
    "UnknownNameError",
    "check_input_shape",
    "create_model",
    "list_models",
    "register_model",
]
