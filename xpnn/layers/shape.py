"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...), the bridge from convolutions to Linear."""
from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .base import Backprop, Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        xp = array_namespace(x)
        shape = tuple(x.shape)
        y = xp.reshape(x, (shape[0], math.prod(shape[1:])))
        return y, lambda dy: xp.reshape(dy, shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_rank(input_shape)
        return (input_shape[0], math.prod(input_shape[1:]))
