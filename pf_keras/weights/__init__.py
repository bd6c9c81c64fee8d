"""Weight files: official PyTorch checkpoints (read without torch) and Keras weight files."""

from pf_keras.weights.loading import load_weights_file
from pf_keras.weights.torch_convert import load_torch_state_dict, plan_torch_transfer
from pf_keras.weights.torch_reader import extract_state_dict, read_state_dict, read_torch_file

__all__ = [
    "extract_state_dict",
    "load_torch_state_dict",
    "load_weights_file",
    "plan_torch_transfer",
    "read_state_dict",
    "read_torch_file",
]
