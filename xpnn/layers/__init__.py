"""xpnn layers: each maps ``x`` to ``(y, backprop)`` using only the array API standard."""
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter
from .dense import Linear
from .dropout import Dropout
from .shape import Flatten

__all__ = ["Layer", "Parameter", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU",
           "Flatten", "Dropout"]
