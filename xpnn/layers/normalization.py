"""Batch normalization over (N, C) or NCHW inputs, with running statistics kept on the device.

Training normalizes with the batch's mean and (biased) variance and updates the running
statistics as PyTorch does: ``running = (1 - momentum) * running + momentum * batch``, with the
unbiased variance. Evaluation normalizes with the running statistics. The running statistics are
buffers (``buffer_names``), so they are saved and loaded with the model.
"""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from ..errors import ShapeError
from ..init import initialize
from .base import Backprop, Layer, Parameter

__all__ = ["BatchNorm1D", "BatchNorm2D"]


class _BatchNorm(Layer):
    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")
    #: the axes statistics are taken over (all but the channel axis 1)
    axes: tuple[int, ...] = (0,)

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype: str = "float32") -> None:
        name = type(self).__name__
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
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

    def _per_channel(self, v: Any, ndim: int) -> Any:
        """A (C,) array shaped to broadcast against the input."""
        xp = array_namespace(v)
        return xp.reshape(v, (1, self.num_features) + (1,) * (ndim - 2))

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        axes, ndim = self.axes, x.ndim
        count = 1
        for axis in axes:
            count *= int(x.shape[axis])
        gamma, beta = self.gamma, self.beta
        if train:
            if count < 2:
                raise ShapeError(f"{self.describe()} needs more than one value per channel in training, "
                                 f"got input shape {tuple(x.shape)}")
            mean = xp.mean(x, axis=axes, keepdims=True)
            centered = x - mean
            var = xp.mean(centered * centered, axis=axes, keepdims=True)
            self._update_running(xp.reshape(mean, (-1,)), xp.reshape(var, (-1,)) * (count / (count - 1)))
        else:
            mean = self._per_channel(self.running_mean, ndim)
            var = self._per_channel(self.running_var, ndim)
            centered = x - mean
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centered * inv_std
        g = self._per_channel(gamma.value, ndim)
        y = x_hat * g + self._per_channel(beta.value, ndim)

        def backprop(dy: Any) -> Any:
            dbeta = xp.sum(dy, axis=axes)
            dgamma = xp.sum(dy * x_hat, axis=axes)
            gamma.accumulate(dgamma)
            beta.accumulate(dbeta)
            if not input_grad:
                return None
            scale = g * inv_std
            if not train:
                return dy * scale
            mean_dy = self._per_channel(dbeta, ndim) / count
            mean_dy_xhat = self._per_channel(dgamma, ndim) / count
            return scale * (dy - mean_dy - x_hat * mean_dy_xhat)

        return y, backprop

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
    axes = (0,)

    def expected_input(self) -> str:
        return f"(N, {self.num_features})"


class BatchNorm2D(_BatchNorm):
    """Batch norm of NCHW images, per channel over the batch and all pixels."""

    input_rank = 4
    axes = (0, 2, 3)

    def expected_input(self) -> str:
        return f"(N, {self.num_features}, H, W)"
