"""Layer and Parameter: a layer holds parameters and maps an input to (output, backprop).

``y, backprop = layer(x, train=True)``; ``dx = backprop(dy)`` adds into each ``Parameter.grad``
and returns dL/dx. The closure keeps what the backward pass needs, so nothing is cached on the
layer and inference (``y, _ = layer(x)``) keeps nothing alive once the result is dropped.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from .. import backend
from ..errors import ShapeError

Backprop = Callable[[Any], Any]

__all__ = ["Layer", "Parameter", "Backprop", "layer_class"]


class Parameter:
    """A trainable array (``value``) and the gradient accumulated for it (``grad``, or None)."""

    __slots__ = ("name", "value", "grad")

    def __init__(self, value: Any, name: str = "") -> None:
        self.name = name
        self.value = value
        self.grad: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def size(self) -> int:
        size = 1
        for n in self.value.shape:
            size *= int(n)
        return size

    def accumulate(self, grad: Any) -> None:
        """Add ``grad`` to ``self.grad`` (the first contribution is stored without a copy)."""
        self.grad = grad if self.grad is None else self.grad + grad

    def zero_grad(self) -> None:
        self.grad = None

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


_REGISTRY: dict[str, type["Layer"]] = {}


def layer_class(name: str) -> type["Layer"]:
    """The Layer subclass saved under ``name`` in a model file."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown layer type {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


class Layer:
    """Base class. Subclasses implement ``forward`` and, if they change the shape, ``output_shape``.

    Subclasses that hold parameters list their attribute names in ``param_names`` (and running
    statistics in ``buffer_names``) and return their constructor arguments from ``config``.
    """

    param_names: ClassVar[tuple[str, ...]] = ()
    buffer_names: ClassVar[tuple[str, ...]] = ()
    #: the input rank the layer accepts (None: any rank >= 1)
    input_rank: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __call__(self, x: Any, train: bool = False, input_grad: bool = True) -> tuple[Any, Backprop]:
        """Check ``x``'s shape, then run ``forward``. ``input_grad=False`` lets backprop skip dx."""
        self.output_shape(tuple(x.shape))
        return self.forward(x, train=train, input_grad=input_grad)

    def forward(self, x: Any, *, train: bool, input_grad: bool) -> tuple[Any, Backprop]:
        raise NotImplementedError

    # ---- shapes -------------------------------------------------------------------------

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for ``input_shape`` (batch first); raises ShapeError if it does not fit."""
        self._check_rank(input_shape)
        return tuple(input_shape)

    def _check_rank(self, input_shape: tuple[int, ...]) -> None:
        rank = self.input_rank
        if rank is not None and len(input_shape) != rank:
            raise ShapeError(
                f"{self.describe()} expects a rank-{rank} input {self.expected_input()}, "
                f"got shape {tuple(input_shape)} (rank {len(input_shape)})"
            )
        if len(input_shape) == 0:
            raise ShapeError(f"{self.describe()} expects a batch, got a scalar (shape ())")

    def expected_input(self) -> str:
        """A short picture of the expected input shape for error messages, like ``(N, 784)``."""
        return ""

    # ---- parameters and state -------------------------------------------------------------

    def parameters(self) -> list[Parameter]:
        return [getattr(self, name) for name in self.param_names]

    def buffers(self) -> dict[str, Any]:
        """Non-trained state saved with the model (batch-norm running statistics)."""
        return {name: getattr(self, name) for name in self.buffer_names}

    def state(self) -> dict[str, Any]:
        """Every array the layer owns, by name: parameters and buffers."""
        out = {name: getattr(self, name).value for name in self.param_names}
        out.update(self.buffers())
        return out

    def load_state(self, arrays: dict[str, Any], device: "backend.Device | str | None" = None) -> None:
        """Replace parameters and buffers with host arrays (moved to ``device``), shapes checked."""
        mine = self.state()
        missing = sorted(set(mine) - set(arrays))
        extra = sorted(set(arrays) - set(mine))
        if missing or extra:
            raise ValueError(f"{self.describe()}: state has missing arrays {missing} and unexpected arrays {extra}")
        target = backend.device_of(next(iter(mine.values()))) if device is None and mine else device
        for name, host in arrays.items():
            have = tuple(mine[name].shape)
            if tuple(host.shape) != have:
                raise ShapeError(f"{self.describe()}.{name}: expected shape {have}, file has {tuple(host.shape)}")
            value = backend.to_device(host, target, dtype=mine[name].dtype, copy=True)
            self._set_array(name, value)

    def _set_array(self, name: str, value: Any) -> None:
        if name in self.param_names:
            param = getattr(self, name)
            param.value = value
            param.grad = None
        else:
            setattr(self, name, value)

    def to(self, device: "backend.Device | str | None" = None, dtype: str | None = None) -> "Layer":
        """Move (and optionally cast, e.g. ``dtype="float64"``) every array of the layer; returns self."""
        target = backend.resolve(device)
        for name, value in self.state().items():
            self._set_array(name, backend.to_device(value, target, dtype=dtype))
        if dtype is not None and hasattr(self, "dtype"):
            self.dtype = dtype
        return self

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable, so ``type(self)(**config)`` rebuilds the layer."""
        return {}

    def describe(self) -> str:
        """How errors name this layer: ``Linear(784 -> 10)`` plus its position in a model."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("init", "dtype"))
        where = f" (layer {self.index})" if getattr(self, "index", None) is not None else ""
        return f"{type(self).__name__}({args}){where}"

    def __repr__(self) -> str:
        return self.describe()
