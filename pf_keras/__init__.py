"""pf_keras: Keras 3 port of "Learning Features with Parameter-Free Layers" (ICLR 2022).

Example:
    >>> from pf_keras import PfResNet50
    >>> model = PfResNet50(weights=None)  # R50-hybrid, 17.33M params
"""

from pf_keras import layers
from pf_keras.imagenet import decode_predictions, preprocess_input
from pf_keras.models import (
    SPECS,
    PfPiT,
    PfResNet50,
    PfViT,
    ResNet,
    ResNet50,
    build_record,
    create_model,
    get_spec,
    list_models,
)
from pf_keras.preprocessing import eval_transform, normalize
from pf_keras.profiling import profile
from pf_keras.weights.errors import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "PfPiT",
    "PfResNet50",
    "PfViT",
    "ResNet",
    "ResNet50",
    "SPECS",
    "build_record",
    "create_model",
    "decode_predictions",
    "eval_transform",
    "get_spec",
    "layers",
    "list_models",
    "normalize",
    "preprocess_input",
    "profile",
]
