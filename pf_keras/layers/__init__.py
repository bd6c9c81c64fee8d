"""Parameter-free primitives and small utility layers."""

from pf_keras.layers.drop_path import DropPath

__all__ = ["DropPath"]
