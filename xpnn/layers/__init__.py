"""xpnn layers: each maps ``x`` to ``(y, backprop)`` using only the array API standard."""
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, LoadReport, Parameter
from .container import Residual, Sequential, checkpointed
from .conv import Conv2D
from .dense import Linear
from .dropout import Dropout
from .memory import MemoryEstimate, memory_estimate
from .normalization import BatchNorm1D, BatchNorm2D
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .shape import Flatten
from .workspace import set_workspace_limit, workspace_limit

__all__ = ["Layer", "Parameter", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU",
           "Flatten", "Dropout"]
__all__ += ["Sequential", "Residual", "LoadReport", "checkpointed"]
__all__ += ["Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm1D", "BatchNorm2D"]
__all__ += ["memory_estimate", "MemoryEstimate", "set_workspace_limit", "workspace_limit"]
