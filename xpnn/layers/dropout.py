"""Inverted dropout: active only with ``train=True``; kept units are scaled by 1/(1-p)."""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import backend
from .base import Backprop, Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    draws_random = True

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p is the probability of dropping a unit and must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        if not train or self.p == 0:
            return x, lambda dy: dy
        xp = array_namespace(x)
        keep = backend.random_uniform(tuple(x.shape), like=x) >= self.p  # kept for backward: 1 byte a value
        scale = 1.0 / (1.0 - self.p)

        def scaled(values: Any) -> Any:
            out = xp.astype(keep, values.dtype)
            out *= values
            out *= scale
            return out

        return scaled(x), scaled

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
