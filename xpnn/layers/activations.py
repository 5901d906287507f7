"""Element-wise activations and Softmax. Each keeps only what its derivative needs."""
from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .. import precision
from ..errors import ShapeError
from .base import Backprop, Layer

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU", "sigmoid"]


def sigmoid(x: Any) -> Any:
    """Logistic function without overflow: exp is only taken of non-positive numbers."""
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class ReLU(Layer):
    """``max(x, 0)``. Backward keeps the output, as PyTorch does, not a mask: the next layer (a
    convolution, a Linear layer, the next residual block) keeps that same array as its input, so
    ReLU adds nothing to what a training step holds; the mask ``y > 0`` is made in backward. It
    multiplies by the 0/1 mask rather than using ``where``: NumPy's ``where`` with an unpredictable
    mask is about ten times slower."""

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        y = xp.maximum(x, 0.0)

        def backprop(dy: Any) -> Any:
            dx = xp.astype(y > 0, dy.dtype)
            dx *= dy
            return dx

        return y, backprop


class LeakyReLU(Layer):
    def __init__(self, alpha: float = 0.01) -> None:
        if not 0 <= alpha < 1:
            raise ValueError(f"LeakyReLU: alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        positive = x > 0
        alpha = self.alpha
        return xp.where(positive, x, alpha * x), lambda dy: xp.where(positive, dy, alpha * dy)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class Sigmoid(Layer):
    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        y = sigmoid(x)
        return y, lambda dy: dy * y * (1.0 - y)


class Tanh(Layer):
    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        y = xp.tanh(x)
        return y, lambda dy: dy * (1.0 - y * y)


class Softmax(Layer):
    """Softmax along ``axis``. For classification prefer raw logits with ``losses.CrossEntropy``,
    which fuses the softmax and is exact where this layer's probabilities underflow. It computes in
    float32 under a mixed dtype policy (:mod:`xpnn.precision`), and returns float32."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = int(axis)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        if not -len(input_shape) <= self.axis < len(input_shape):
            raise ShapeError(f"{self.describe()}: axis {self.axis} is out of range for a rank-{len(input_shape)} "
                             f"input (shape {tuple(input_shape)})")
        return tuple(input_shape)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        axis = self.axis
        x = precision.variable(x)
        e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
        y = e / xp.sum(e, axis=axis, keepdims=True)

        def backprop(dy: Any) -> Any:
            dy = precision.variable(dy)
            return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))

        return y, backprop

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}


class GELU(Layer):
    """GELU with the tanh approximation (Hendrycks & Gimpel; PyTorch's ``approximate="tanh"``).

    The array API standard has no ``erf``, so the exact form is not available on every backend.
    """

    _C = math.sqrt(2.0 / math.pi)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        c = self._C
        inner = c * (x + 0.044715 * x * x * x)
        t = xp.tanh(inner)
        y = 0.5 * x * (1.0 + t)

        def backprop(dy: Any) -> Any:
            dinner = c * (1.0 + 3 * 0.044715 * x * x)
            return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)

        return y, backprop
