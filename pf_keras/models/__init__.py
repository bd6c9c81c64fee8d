"""Model families, their specs and the registry."""

from pf_keras.models import pit, resnet, vit  # noqa: F401  (family modules)
from pf_keras.models.pit import PfPiT, PiT
from pf_keras.models.registry import BuildRecord, build_record, create_model, get_builder, list_models, register_model
from pf_keras.models.resnet import PfResNet50, ResNet, ResNet50
from pf_keras.models.specs import SPECS, Checkpoint, EvalTransform, ModelSpec, get_spec
from pf_keras.models.vit import PfViT, ViT

__all__ = [
    "SPECS",
    "BuildRecord",
    "Checkpoint",
    "EvalTransform",
    "ModelSpec",
    "PfPiT",
    "PfResNet50",
    "PfViT",
    "PiT",
    "ResNet",
    "ResNet50",
    "ViT",
    "build_record",
    "create_model",
    "get_builder",
    "get_spec",
    "list_models",
    "register_model",
]
