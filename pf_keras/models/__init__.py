"""Model families and the registry."""

from pf_keras.models import resnet  # noqa: F401  (registers the ResNets)
from pf_keras.models.presets import PRESETS, Preset
from pf_keras.models.registry import create_model, get_builder, list_models, register_model
from pf_keras.models.resnet import PfResNet50, ResNet, ResNet50

__all__ = [
    "PRESETS",
    "PfResNet50",
    "Preset",
    "ResNet",
    "ResNet50",
    "create_model",
    "get_builder",
    "list_models",
    "register_model",
]
