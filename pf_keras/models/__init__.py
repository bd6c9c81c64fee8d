"""Model families and the registry."""

from pf_keras.models import pit, resnet, vit  # noqa: F401  (registers the families)
from pf_keras.models.pit import PfPiT, PiT
from pf_keras.models.presets import PRESETS, Preset
from pf_keras.models.registry import create_model, get_builder, list_models, register_model
from pf_keras.models.resnet import PfResNet50, ResNet, ResNet50
from pf_keras.models.vit import PfViT, ViT

__all__ = [
    "PRESETS",
    "PfPiT",
    "PfResNet50",
    "PfViT",
    "PiT",
    "Preset",
    "ResNet",
    "ResNet50",
    "ViT",
    "create_model",
    "get_builder",
    "list_models",
    "register_model",
]
