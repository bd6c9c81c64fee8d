"""pf_keras: Keras 3 port of "Learning Features with Parameter-Free Layers" (ICLR 2022).

Example:
    >>> from pf_keras import PfResNet50
    >>> model = PfResNet50(weights=None)  # R50-hybrid, 17.33M params
"""

from pf_keras import layers
from pf_keras.imagenet import decode_predictions, preprocess_input
from pf_keras.models import PRESETS, PfPiT, PfResNet50, PfViT, ResNet, ResNet50, create_model, list_models
from pf_keras.profiling import profile

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "PfPiT",
    "PfResNet50",
    "PfViT",
    "ResNet",
    "ResNet50",
    "create_model",
    "decode_predictions",
    "layers",
    "list_models",
    "preprocess_input",
    "profile",
]
