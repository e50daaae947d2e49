"""The model zoo: CIFAR-size ResNets, VGG-16, MobileNetV1 and AlexNet, plus torchvision's
ResNet-50, all built by name through one registry; and a user's own model: ``torchvision:<name>``,
``timm:<name>`` or an import path ``package.module:factory`` (:mod:`pruning.models.external`),
with weights from a state_dict file (:mod:`pruning.models.weights`).

Importing this package imports every model module so that their factories register.
"""
from pruning.registry import UnknownNameError
from pruning.models import alexnet, mobilenet, resnet_cifar, segmentation, torchvision_models, vgg  # noqa: F401  (registers)
from pruning.models._registry import (
    InputShapeError,
    check_input_shape,
    check_model_name,
    create_model,
    list_models,
    register_model,
)
from pruning.models.external import ModelSourceError, import_root, is_external
from pruning.models.weights import WeightsError, load_weights, read_weights

__all__ = [
    "InputShapeError",
    "ModelSourceError",
    "UnknownNameError",
    "WeightsError",
    "check_input_shape",
    "check_model_name",
    "create_model",
    "import_root",
    "is_external",
    "load_weights",
    "read_weights",
    "list_models",
    "register_model",
]
