"""Models: :class:`Sequential`, the network you train (the composition of
:class:`xpnn.layers.Sequential` plus a :class:`~xpnn.train.TrainingSession` and ``fit``,
``evaluate``, ``predict``), and ready-made stacks like :func:`mlp`."""
from __future__ import annotations

from typing import Any, Sequence

from .layers import Layer, Linear
from .layers import activations as _activations
from .layers import container
from .layers.dropout import Dropout
from .train.history import History
from .train.loop import evaluate, fit, predict
from .train.session import TrainingSession

__all__ = ["Sequential", "mlp"]


def _session_field(name: str) -> property:
    """``model.<name>``, read from and written to the model's :class:`TrainingSession`."""
    return property(lambda self: getattr(self.session, name), lambda self, value: setattr(self.session, name, value),
                    doc=f"The training session's ``{name}`` (see :class:`~xpnn.train.TrainingSession`).")


class Sequential(container.Sequential, register=False):
    """Layers applied in order, and their training: ``fit``, ``evaluate``, ``predict``.

    The composition (forward, backward, parameters, ``summary``) is :class:`xpnn.layers.Sequential`'s;
    what training leaves behind is in ``model.session``, a :class:`~xpnn.train.TrainingSession`,
    also reachable as ``model.loss``, ``model.optimizer``, ``model.history``, ``model.metadata``,
    ``model.stop_training`` and ``model.input_shape``. A model file stores it as a plain Sequential.
    """

    loss = _session_field("loss")
    optimizer = _session_field("optimizer")
    history = _session_field("history")
    metadata = _session_field("metadata")
    stop_training = _session_field("stop_training")
    input_shape = _session_field("input_shape")

    def __init__(self, layers: Any, checkpoint: bool = False) -> None:
        super().__init__(layers, checkpoint=checkpoint)
        self.session = TrainingSession(input_shape=self._fixed_input_shape())

    def __call__(self, x: Any, train: bool = False, input_grad: bool = True) -> Any:
        result = super().__call__(x, train=train, input_grad=input_grad)
        if self.session.input_shape is None:  # the first call that runs records its shape
            self.session.input_shape = tuple(int(d) for d in x.shape[1:])
        return result

    def build(self, sample_shape: Sequence[int], batch_size: int = 1) -> tuple[int, ...]:
        """Check that every layer accepts the output of the one before, for samples of ``sample_shape``
        (without the batch axis), and record it as the model's input shape. Returns the output shape."""
        sample = tuple(int(d) for d in sample_shape)
        shape = self.output_shape((batch_size, *sample))
        self.session.input_shape = sample
        return shape

    def fit(self, x: Any, y: Any, **kwargs: Any) -> History:
        """Train; see :func:`xpnn.train.fit` for the arguments. Returns the History."""
        return fit(self, x, y, **kwargs)

    def evaluate(self, x: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        """Loss and metrics on ``(x, y)``; see :func:`xpnn.train.evaluate`."""
        return evaluate(self, x, y, **kwargs)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Model outputs for ``x``, in eval mode, as a NumPy array; see :func:`xpnn.train.predict`."""
        return predict(self, x, **kwargs)


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
