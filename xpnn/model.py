"""Sequential: a list of layers composed into one ``(y, backprop)`` function, plus training methods."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from array_api_compat import array_namespace

from . import backend
from .errors import ShapeError
from .layers import Layer, Linear, Parameter
from .layers import activations as _activations
from .layers.base import layer_class
from .layers.dropout import Dropout
from .layers.pool import MaxPool2D

__all__ = ["Sequential", "mlp"]


class Sequential:
    """Layers applied in order. ``y, backprop = model(x, train=True)``; ``dx = backprop(dy)``.

    Parameters are named ``"<layer index>.<attribute>"`` (``"0.weight"``), the keys of
    :meth:`state_dict` and of optimizer state.
    """

    def __init__(self, layers: Iterable[Layer]) -> None:
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {index} is a {type(layer).__name__}, not an xpnn Layer")
            layer.index = index
            for name in layer.param_names:
                getattr(layer, name).name = f"{index}.{name}"
        trainable = [i for i, layer in enumerate(self.layers) if layer.param_names]
        self._first_trainable = trainable[0] if trainable else len(self.layers)
        self._order = _execution_order(self.layers)
        self.input_shape: tuple[int, ...] | None = None
        self.loss: Any = None
        self.optimizer: Any = None
        self.history: Any = None

    # ---- forward / backward ---------------------------------------------------------------

    def __call__(self, x: Any, train: bool = False, input_grad: bool = True) -> tuple[Any, Any]:
        """Run every layer. With ``input_grad=False`` the backward pass stops at the first layer
        with parameters and returns None (what training needs: no dL/dx for the data)."""
        device = self._check_input(x)
        first = 0 if input_grad else self._first_trainable
        backprops = []
        with backend.device_context(device):
            for index in self._order:
                x, backprop = self.layers[index](x, train=train, input_grad=input_grad or index > first)
                if index >= first:
                    backprops.append(backprop)

        def backprop_all(dy: Any) -> Any:
            with backend.device_context(device):
                for backprop in reversed(backprops):
                    dy = backprop(dy)
            return dy

        return x, backprop_all

    def _check_input(self, x: Any) -> backend.Device:
        """The device ``x`` is on, checked to be the model's (the one made current for the work)."""
        try:
            xp = array_namespace(x)
        except TypeError:
            raise TypeError(f"Sequential input must be an array on the model's device ({self.device}), got "
                            f"{type(x).__name__}; use xpnn.to_device(x, model.device)") from None
        params = self.parameters()
        where = backend.device_of(x)
        if not params:
            return where
        if where != self.device:
            raise backend.DeviceError(
                f"Sequential input is on {where} but the model is on {self.device}: move the input with "
                f"xpnn.to_device(x, model.device), or the model with model.to({where.name!r})")
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"Sequential input must be floating point ({self.dtype}), got {x.dtype}; scale images "
                            f"with x / 255 or train with fit(..., scale='unit')")
        if x.dtype != params[0].value.dtype:
            raise TypeError(f"Sequential input has dtype {x.dtype} but the model's parameters are {self.dtype}; "
                            f"cast the input or call model.to(dtype=...)")
        return where

    # ---- shapes ---------------------------------------------------------------------------

    def build(self, sample_shape: Sequence[int], batch_size: int = 1) -> tuple[int, ...]:
        """Check that every layer accepts the output of the one before, for samples of ``sample_shape``
        (without the batch axis); remember it for :meth:`summary`. Returns the output shape."""
        shape = (batch_size, *(int(d) for d in sample_shape))
        for layer in self.layers:
            shape = layer.output_shape(shape)
        self.input_shape = tuple(int(d) for d in sample_shape)
        return shape

    def output_shapes(self, sample_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        sample_shape = sample_shape or self.input_shape or self._guess_input_shape()
        shape, shapes = (1, *sample_shape), []
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def _guess_input_shape(self) -> tuple[int, ...]:
        first = self.layers[self._first_trainable] if self._first_trainable < len(self.layers) else None
        if isinstance(first, Linear):
            return (first.in_features,)
        raise ShapeError("the input shape of this model is unknown: pass summary(input_shape=(C, H, W)) "
                         "or call model.build(sample_shape) first")

    # ---- parameters and state -------------------------------------------------------------

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    @property
    def device(self) -> backend.Device:
        params = self.parameters()
        return backend.device_of(params[0].value) if params else backend.current_device()

    @property
    def dtype(self) -> str:
        params = self.parameters()
        return backend.dtype_name(params[0].value.dtype) if params else "float32"

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer, keyed ``"<index>.<name>"``."""
        return {f"{i}.{name}": np.array(backend.to_numpy(value))
                for i, layer in enumerate(self.layers) for name, value in layer.state().items()}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Load host arrays (as from :meth:`state_dict`) onto the model's device; shapes must match."""
        expected = {f"{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.state()}
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        if missing or extra:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
        device = self.device
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if mine:
                layer.load_state(mine, device)

    def to(self, device: "backend.Device | str | None" = None, dtype: str | None = None) -> "Sequential":
        """Move every parameter and buffer to ``device`` (and cast to ``dtype``); returns self."""
        for layer in self.layers:
            layer.to(device, dtype)
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def count_params(self) -> int:
        return sum(p.size for p in self.parameters())

    # ---- description ----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The architecture as JSON-able data: layer types and constructor arguments."""
        return {"layers": [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Sequential":
        return cls([layer_class(item["type"])(**item["config"]) for item in config["layers"]])

    def summary(self, input_shape: Sequence[int] | None = None, print_fn: Any = print) -> str:
        """A table of layers, output shapes (batch axis as N) and parameter counts; printed and returned."""
        shapes = self.output_shapes(input_shape)
        rows = [("#", "Layer", "Output shape", "Params")]
        for i, (layer, shape) in enumerate(zip(self.layers, shapes)):
            params = sum(p.size for p in layer.parameters())
            rows.append((str(i), layer.describe().replace(f" (layer {i})", ""),
                         "(N, " + ", ".join(map(str, shape[1:])) + ")", f"{params:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        text = [line]
        for k, row in enumerate(rows):
            text.append("  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in
                                  enumerate(zip(row, widths))))
            if k == 0:
                text.append(line)
        text += [line, f"Total parameters: {self.count_params():,}  on {self.device}, {self.dtype}"]
        out = "\n".join(text)
        if print_fn is not None:
            print_fn(out)
        return out

    def __repr__(self) -> str:
        inner = ",\n  ".join(layer.describe() for layer in self.layers)
        return f"Sequential([\n  {inner}\n])"

    # ---- training -------------------------------------------------------------------------

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train; see :func:`xpnn.train.fit` for the arguments. Returns the History."""
        from .train import fit
        return fit(self, x, y, **kwargs)

    def evaluate(self, x: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        """Loss and metrics on ``(x, y)``; see :func:`xpnn.train.evaluate`."""
        from .train import evaluate
        return evaluate(self, x, y, **kwargs)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Model outputs for ``x``, in eval mode, as a NumPy array; see :func:`xpnn.train.predict`."""
        from .train import predict
        return predict(self, x, **kwargs)


def _execution_order(layers: list[Layer]) -> list[int]:
    """Layer indices in the order to run them: each ReLU directly followed by a MaxPool2D runs
    after it instead. The two commute (max-pooling picks the same element before or after a
    monotonic ReLU, ties included), and ReLU then touches a quarter of the data."""
    order = list(range(len(layers)))
    i = 0
    while i < len(layers) - 1:
        if type(layers[i]) is _activations.ReLU and type(layers[i + 1]) is MaxPool2D:
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order


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
