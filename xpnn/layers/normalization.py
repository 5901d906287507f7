"""Batch normalization over (N, C) or NCHW inputs, with running statistics kept on the device.

Training normalizes with the batch's mean and (biased) variance and updates the running
statistics as PyTorch does: ``running = (1 - momentum) * running + momentum * batch``, with the
unbiased variance. Evaluation normalizes with the running statistics, and so does a frozen layer
(``trainable = False``) in training, without updating them: fine-tuning a network keeps the
statistics it learned. The running statistics are buffers (``buffer_names``), so they are saved
and loaded with the model.
"""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import precision
from ..errors import ShapeError
from ..init import initialize
from ..validation import check_integer
from .base import Backprop, Layer, Parameter, backprop_ran_twice, is_recomputing

__all__ = ["BatchNorm1D", "BatchNorm2D"]


def _row_dots(a: Any, b: Any) -> Any:
    """``sum(a * b, axis=1)`` of two (C, M) arrays as one batched matmul, without the (C, M) product.

    Not ``vecdot``: where a library has none (CuPy), array-api-compat uses a generic stand-in that
    moves axes, broadcasts and conjugates before its matmul. On NumPy this is as fast as ``vecdot``,
    and faster than ``sum(a * b)``, which makes the product first.
    """
    xp = array_namespace(a)
    return xp.matmul(xp.expand_dims(a, axis=1), xp.expand_dims(b, axis=2))[:, 0, 0]


class _BatchNorm(Layer):
    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype: str = "float32") -> None:
        name = type(self).__name__
        num_features = check_integer(name, "num_features", num_features)
        if not 0 <= momentum <= 1:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        self.num_features, self.momentum, self.eps, self.dtype = num_features, float(momentum), float(eps), dtype
        shape = (num_features,)
        zeros = initialize("zeros", shape, num_features, num_features, dtype)
        self.gamma = Parameter(zeros + 1, "gamma")
        self.beta = Parameter(zeros, "beta")
        self.running_mean = zeros
        self.running_var = zeros + 1

    def _channel_major(self, x: Any) -> Any:
        """``x`` as a (C, M) array, M the values per channel. Free for Conv2D/pool outputs, which are
        NCHW views of (C, N, H, W) memory; one copy for an NCHW-contiguous input."""
        xp = array_namespace(x)
        order = (1, 0, *range(2, x.ndim))
        return xp.reshape(xp.permute_dims(x, order), (self.num_features, -1))

    def _batch_major(self, values: Any, shape: tuple[int, ...]) -> Any:
        """A (C, M) result back in the input's ``shape``, as a view of the channel-major memory."""
        xp = array_namespace(values)
        order = (1, 0, *range(2, len(shape)))
        return xp.permute_dims(xp.reshape(values, (shape[1], shape[0], *shape[2:])), order)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        shape = tuple(int(d) for d in x.shape)
        values = precision.variable(self._channel_major(x))  # the normalization arithmetic is float32
        count = int(values.shape[1])
        gamma, beta = self.gamma, self.beta
        if not train or not self._trainable:  # frozen: running statistics, in fit too (Keras' rule)
            inv_std = 1.0 / xp.sqrt(self.running_var + self.eps)
            scale = gamma.value * inv_std
            shift = beta.value - self.running_mean * scale
            y = values * scale[:, None]
            y += shift[:, None]

            def backprop_eval(dy: Any) -> Any:
                dy_values = precision.variable(self._channel_major(dy))
                gamma.accumulate(_row_dots(dy_values, values - self.running_mean[:, None]) * inv_std)
                beta.accumulate(xp.sum(dy_values, axis=1))
                return self._batch_major(precision.compute(dy_values * scale[:, None]), shape) if input_grad else None

            return self._batch_major(precision.compute(y), shape), backprop_eval
        if count < 2:
            raise ShapeError(f"{self.describe()} needs more than one value per channel in training, "
                             f"got input shape {shape}")
        mean = xp.sum(values, axis=1) / count
        centered = values - mean[:, None]
        var = _row_dots(centered, centered) / count
        if not is_recomputing():  # a checkpointed block's second run updates nothing
            self._update_running(mean, var * (count / (count - 1)))
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        scale = gamma.value * inv_std
        y = centered * scale[:, None]
        y += beta.value[:, None]
        centered = precision.compute(centered)  # what backward keeps is 16-bit under a mixed policy

        def backprop(dy: Any) -> Any:
            """Runs once: dx is computed in place in ``centered``'s memory (no full-size temporary;
            under a mixed policy, in its float32 copy)."""
            # with x_hat = centered * inv_std: dgamma = sum(dy * x_hat), dbeta = sum(dy), and
            # dx = scale * (dy - centered * inv_std * dgamma / count - dbeta / count), per channel
            nonlocal centered
            if centered is None:
                raise backprop_ran_twice(self)
            dy_values = precision.variable(self._channel_major(dy))
            dx, centered = precision.variable(centered), None
            dbeta = xp.sum(dy_values, axis=1)
            dgamma = _row_dots(dy_values, dx) * inv_std
            gamma.accumulate(dgamma)
            beta.accumulate(dbeta)
            if not input_grad:
                return None
            dx *= (inv_std * dgamma * (-1.0 / count))[:, None]
            dx += dy_values
            dx -= (dbeta * (1.0 / count))[:, None]
            dx *= scale[:, None]
            return self._batch_major(precision.compute(dx), shape)

        return self._batch_major(precision.compute(y), shape), backprop

    def _update_running(self, batch_mean: Any, batch_var: Any) -> None:
        m = self.momentum
        self.running_mean = self.running_mean * (1.0 - m) + batch_mean * m
        self.running_var = self.running_var * (1.0 - m) + batch_var * m

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        if input_shape[1] != self.num_features:
            raise ShapeError(
                f"{self.describe()} expects {self.num_features} channels (input shape {self.expected_input()}), "
                f"got {input_shape[1]} (input shape {tuple(input_shape)})"
            )
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps, "dtype": self.dtype}


class BatchNorm1D(_BatchNorm):
    """Batch norm of (N, C) features."""

    input_rank = 2

    def expected_input(self) -> str:
        return f"(N, {self.num_features})"


class BatchNorm2D(_BatchNorm):
    """Batch norm of NCHW images, per channel over the batch and all pixels."""

    input_rank = 4

    def expected_input(self) -> str:
        return f"(N, {self.num_features}, H, W)"
