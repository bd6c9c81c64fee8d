"""Weight files: official PyTorch checkpoints (read without torch) and Keras weight files."""

from pf_keras.weights.errors import CheckpointError
from pf_keras.weights.loading import load_weights_file
from pf_keras.weights.torch_convert import load_torch_state_dict, plan_torch_transfer, precision_loss_allowed
from pf_keras.weights.torch_reader import ReadLimits, extract_state_dict, read_state_dict, read_torch_file

__all__ = [
    "CheckpointError",
    "ReadLimits",
    "extract_state_dict",
    "load_torch_state_dict",
    "load_weights_file",
    "plan_torch_transfer",
    "precision_loss_allowed",
    "read_state_dict",
    "read_torch_file",
]
