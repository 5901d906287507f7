"""Models: :class:`Sequential` (a container layer, defined in :mod:`xpnn.layers.container` so that
blocks like :class:`~xpnn.layers.Residual` can hold one) and ready-made stacks like :func:`mlp`."""
from __future__ import annotations

from typing import Sequence

from .layers import Layer, Linear
from .layers import activations as _activations
from .layers.container import Sequential
from .layers.dropout import Dropout

__all__ = ["Sequential", "mlp"]


_ACTIVATIONS = {"relu": _activations.ReLU, "leaky_relu": _activations.LeakyReLU, "tanh": _activations.Tanh,
                "sigmoid": _activations.Sigmoid, "gelu": _activations.GELU}


def mlp(sizes: Sequence[int], activation: str = "relu", init: str = "he", dropout: float = 0.0,
        output_activation: str | None = None, dtype: str = "float32") -> Sequential:
    """A multilayer perceptron ``[n_in, h1, ..., n_out]``: Linear + activation per hidden layer.

    The output layer has no activation by default: pair it with a loss ``from_logits``.
    ``xpnn.mlp([12288, 20, 7, 5, 1], init="lecun")`` is the tutorials' L-layer cat classifier.
    """
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least [inputs, outputs], got {list(sizes)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(Linear(int(n_in), int(n_out), init=init, dtype=dtype))
        if not last:
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout))
    if output_activation is not None:
        if output_activation not in _ACTIVATIONS:
            raise ValueError(f"unknown output activation {output_activation!r}")
        layers.append(_ACTIVATIONS[output_activation]())
    return Sequential(layers)
